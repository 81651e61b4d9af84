//! The personas of the supervision tree, by name: one enum instead of string literals, so a
//! misspelt persona does not compile and every `match` over them is checked for completeness.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A persona: one supervised actor with a definition file in `actors/<name>.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Persona {
    /// The project manager: the root; owns the queue and the pipelines.
    Compass,
    /// The token books.
    Ledger,
    /// Plans a task.
    Planner,
    /// Implements and delivers a task.
    Patch,
    /// Verifies a task (the QA gate).
    Circuit,
    /// Deploys apps.
    UplinkDeploy,
    /// Runs scheduled checks.
    UplinkWatch,
    /// Answers incidents from runbooks.
    UplinkRespond,
}

impl Persona {
    /// Every persona, in the order Compass starts them (itself first).
    pub const ALL: [Persona; 8] = [
        Persona::Compass,
        Persona::Ledger,
        Persona::Planner,
        Persona::Patch,
        Persona::Circuit,
        Persona::UplinkDeploy,
        Persona::UplinkWatch,
        Persona::UplinkRespond,
    ];

    /// The name the API, the logs, the events and the persona files use (`uplink-deploy`).
    pub const fn name(self) -> &'static str {
        match self {
            Persona::Compass => "compass",
            Persona::Ledger => "ledger",
            Persona::Planner => "planner",
            Persona::Patch => "patch",
            Persona::Circuit => "circuit",
            Persona::UplinkDeploy => "uplink-deploy",
            Persona::UplinkWatch => "uplink-watch",
            Persona::UplinkRespond => "uplink-respond",
        }
    }

    /// The persona called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Persona> {
        Persona::ALL
            .into_iter()
            .find(|persona| persona.name() == name)
    }
}

impl fmt::Display for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Persona> for String {
    fn from(persona: Persona) -> String {
        persona.name().to_owned()
    }
}

/// A name that is no persona's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown persona `{0}`")]
pub struct UnknownPersona(pub String);

impl FromStr for Persona {
    type Err = UnknownPersona;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Persona::from_name(name).ok_or_else(|| UnknownPersona(name.to_owned()))
    }
}

impl Serialize for Persona {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Persona {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_persona() {
        for persona in Persona::ALL {
            assert_eq!(persona.name().parse::<Persona>(), Ok(persona));
            assert_eq!(persona.to_string(), persona.name());
        }
        assert_eq!(
            "uplink_deploy".parse::<Persona>(),
            Err(UnknownPersona("uplink_deploy".into()))
        );
    }

    #[test]
    fn it_serializes_as_its_name() {
        let json = serde_json::to_string(&Persona::UplinkRespond).unwrap();
        assert_eq!(json, "\"uplink-respond\"");
        let back: Persona = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Persona::UplinkRespond);
    }
}
