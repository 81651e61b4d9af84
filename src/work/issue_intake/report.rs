//! The write-back half of a repository's loop: each linked task's one comment, the 👀 reaction,
//! closing the issue after a merge the PR cannot close it by, and `/glitchlab` commands.

use super::*;

impl RepoIntake {
    /// Brings every linked task's comment up to date (a write only when what it says changed).
    pub(super) async fn report(&mut self, sweep: bool) {
        let ids: Vec<TaskId> = self
            .linked
            .iter()
            .filter(|(_, linked)| sweep || !linked.quiet)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let task = match self.services.store.task(id).await {
                Ok(Some(task)) => task,
                Ok(None) => {
                    self.linked.remove(&id);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(task = %id, %error, "issue report could not read its task");
                    continue;
                }
            };
            if let Err(error) = self.report_one(&task).await {
                tracing::warn!(task = %id, %error, "issue write-back failed; retried next tick");
            }
        }
    }

    async fn report_one(&mut self, task: &Task) -> Result<(), github::GithubError> {
        let Some(linked) = self.linked.get_mut(&task.id) else {
            return Ok(());
        };
        linked.open = !task.progress.status.is_terminal();
        let number = linked.number;
        let started = task.progress.started_at.is_some() || task.progress.stage.is_some();
        if started && !linked.reacted {
            self.client
                .react_to_issue(&self.entry.repo, number, "eyes")
                .await?;
            self.linked_mut(task.id).reacted = true;
        }
        self.write_comment(task).await?;
        let merged = task.progress.status == TaskStatus::Done
            && task
                .progress
                .pull_request
                .as_ref()
                .is_some_and(|pr| pr.state == PrState::Merged);
        if merged && !self.linked_mut(task.id).closed {
            let default = self.client.default_branch(&self.entry.repo).await?;
            if default != task.spec.base_branch {
                self.client.close_issue(&self.entry.repo, number).await?;
            }
            self.linked_mut(task.id).closed = true;
        }
        // Everything the issue should say of an ended task is said.
        self.linked_mut(task.id).quiet = task.progress.status.is_terminal();
        Ok(())
    }

    fn linked_mut(&mut self, id: TaskId) -> &mut Linked {
        self.linked.entry(id).or_default()
    }

    /// The task's comment: found by its marker (once per process), written or edited in place.
    async fn write_comment(&mut self, task: &Task) -> Result<(), github::GithubError> {
        let linked = self.linked_mut(task.id);
        let signature = render::signature(task, &linked.notes);
        if linked.shown.as_deref() == Some(signature.as_str()) {
            return Ok(());
        }
        let (number, notes, known) = (linked.number, linked.notes.clone(), linked.comment);
        let cost = self.cost(task.id).await;
        let body = render::comment(task, cost, &notes);
        let comment = match known {
            Some(id) => Some(id),
            None => self.find_comment(number, task.id).await?,
        };
        let comment = match comment {
            Some(id) => {
                self.client
                    .update_issue_comment(&self.entry.repo, id, &body)
                    .await?;
                id
            }
            None => {
                self.client
                    .create_issue_comment(&self.entry.repo, number, &body)
                    .await?
                    .id
            }
        };
        let linked = self.linked_mut(task.id);
        linked.comment = Some(comment);
        linked.shown = Some(signature);
        Ok(())
    }

    async fn find_comment(
        &self,
        number: u64,
        task: TaskId,
    ) -> Result<Option<u64>, github::GithubError> {
        let mark = render::marker(task);
        let comments = self.client.issue_comments(&self.entry.repo, number).await?;
        Ok(comments
            .iter()
            .find(|c| c.body.as_deref().is_some_and(|b| b.contains(&mark)))
            .map(|c| c.id))
    }

    /// What the task's engine runs cost so far.
    async fn cost(&self, task: TaskId) -> u64 {
        match self.services.store.runs(task).await {
            Ok(runs) => runs.iter().filter_map(|r| r.cost).sum(),
            Err(_) => 0,
        }
    }

    /// Carries out the `/glitchlab` commands webhooks brought.
    pub(super) async fn commands(&mut self) {
        let commands = with_inbox(&self.inbox, |inbox| std::mem::take(&mut inbox.commands));
        for command in commands {
            if let Err(error) = self.command(&command).await {
                tracing::warn!(repo = %self.entry.repo, ?command, %error, "issue command failed");
            }
        }
    }

    async fn command(&mut self, command: &Command) -> Result<(), String> {
        let Some(task) = self
            .linked
            .iter()
            .rev()
            .find(|(_, l)| l.number == command.number)
            .map(|(id, _)| *id)
        else {
            return Err("the issue has no task".into());
        };
        let permission = self
            .client
            .permission(&self.entry.repo, &command.user)
            .await
            .map_err(|e| e.to_string())?;
        if !WRITERS.contains(&permission.as_str()) {
            let note = format!(
                "@{}: `/glitchlab {}` needs write permission on the repository; ignored.",
                command.user,
                command.verb.as_str()
            );
            let linked = self.linked_mut(task);
            if !linked.notes.contains(&note) && linked.notes.len() < NOTES_MAX {
                linked.notes.push(note);
                linked.quiet = false;
            }
            return Ok(());
        }
        let by = format!("github:{}", command.user);
        act(&self.services, task, command.verb, &by).await?;
        let linked = self.linked_mut(task);
        linked.open = true;
        linked.closed = false;
        linked.quiet = false;
        Ok(())
    }
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
        }
    }
}

/// Retries (a new budget round reserved first) or cancels the task through Compass.
async fn act(services: &Services, id: TaskId, verb: Verb, by: &str) -> Result<(), String> {
    let compass: ActorRef<CompassMsg> =
        crate::runtime::current_persona(&services.directory, COMPASS_WAIT)
            .await
            .map_err(|e| e.to_string())?;
    let task = services
        .store
        .task(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the task is gone")?;
    let action = match verb {
        Verb::Cancel => TaskAction::Cancel,
        Verb::Retry => {
            if !task.billing.settled {
                // Settled concurrently by Compass is fine too.
                let _ = crate::work::metering::settle(services, &task).await;
            }
            let round = task.billing.budget_rounds + 1;
            let reservation = crate::work::metering::reserve(&services.directory, &task, round)
                .await
                .map_err(|e| e.to_string())?;
            TaskAction::Retry {
                reservation: Some(reservation),
                from: None,
            }
        }
    };
    let reservation = match &action {
        TaskAction::Retry { reservation, .. } => reservation.clone(),
        _ => None,
    };
    let by = Some(by.to_owned());
    let answer = compass
        .call(
            |reply| CompassMsg::Act {
                task_id: id,
                action,
                by,
                reply,
            },
            Some(COMPASS_WAIT),
        )
        .await;
    let outcome = match answer {
        Ok(CallResult::Success(Ok(_))) => Ok(()),
        Ok(CallResult::Success(Err(error))) => Err(error.to_string()),
        _ => Err("compass did not answer".to_owned()),
    };
    if let (Err(_), Some(reservation)) = (&outcome, &reservation) {
        crate::work::metering::release(&services.directory, reservation).await;
    }
    outcome
}
