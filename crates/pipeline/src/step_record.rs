//! A record of the steps a build ran, in order, each with its output: for tools that inspect
//! or replay a build (a plan's derivations, a benchmark's plain script of the same commands).
//! A project keeps one only when asked to (see [`crate::Project::recording`]).

use std::sync::{Arc, Mutex};

use repro::{Artifact, Step};

#[derive(Debug, Default)]
pub struct StepRecord {
    steps: Mutex<Vec<(Step, Artifact)>>,
}

impl StepRecord {
    pub fn new() -> Arc<StepRecord> {
        Arc::default()
    }

    pub(crate) fn push(&self, step: Step, artifact: Artifact) {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).push((step, artifact));
    }

    /// Every step recorded so far, in the order they ran.
    pub fn steps(&self) -> Vec<(Step, Artifact)> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
