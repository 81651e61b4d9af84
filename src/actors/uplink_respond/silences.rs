//! Uplink-Respond's silences: the active ones live in its state (loaded at start, changed only by
//! [`act`], which writes the store first), so checking a signal reads no store.

use chrono::Utc;

use super::UplinkRespondState;
use crate::model::ops::error::OpsError;
use crate::model::ops::records::Signal;
use crate::model::ops::silence::{Silence, ACTIVE_SILENCES_MAX};
use crate::runtime::uplink_respond::SilenceAct;
use crate::storage::ops::OpsStore;

/// The silences active now, as stored (read once per incarnation).
pub(super) async fn load(ops: &OpsStore) -> Result<Vec<Silence>, OpsError> {
    Ok(ops.silences(ACTIVE_SILENCES_MAX, false, Utc::now()).await?)
}

/// The id of the active silence that quiets `signal`, if one does (counted in
/// `glitchlab_signals_silenced_total`). Ended silences are dropped from the state on the way.
pub(super) fn silencing(state: &mut UplinkRespondState, signal: &Signal) -> Option<String> {
    let now = Utc::now();
    state.silences.retain(|silence| silence.ends_at > now);
    let silence = state
        .silences
        .iter()
        .find(|silence| silence.silences(signal, now))?;
    let app = state.ctx.services.definitions.ops.app_label(&signal.app);
    crate::platform::metrics::signal_silenced(app);
    tracing::info!(silence = %silence.id, app = %signal.app, signal = %signal.signal, "signal silenced");
    Some(silence.id.clone())
}

/// Makes or ends a silence: durable in the store first, then in force here.
pub(super) async fn act(
    state: &mut UplinkRespondState,
    act: SilenceAct,
) -> Result<Silence, OpsError> {
    match act {
        SilenceAct::Add(silence) => {
            if !state.ctx.ops.add_silence(&silence).await? {
                return Err(OpsError::SilencesFull(format!(
                    "{ACTIVE_SILENCES_MAX} silences are active already: expire one first"
                )));
            }
            tracing::info!(silence = %silence.id, by = %silence.created_by, "silence made");
            state.silences.push(silence.clone());
            Ok(silence)
        }
        SilenceAct::Expire { id, by } => {
            let silence = state
                .ctx
                .ops
                .expire_silence(&id, by, Utc::now())
                .await?
                .ok_or_else(|| OpsError::NotFound(format!("no silence with id `{id}`")))?;
            tracing::info!(silence = %id, "silence expired");
            state.silences.retain(|active| active.id != id);
            Ok(silence)
        }
    }
}
