//! The per-session state machine (`voxwire.v1.SessionState`). A transition
//! the table does not allow is refused and reported, never a panic: a client
//! cannot crash the orchestrator by sending messages in an odd order.

use voxwire_proto::voxwire::v1::SessionState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid session transition {from:?} -> {to:?}")]
pub struct InvalidTransition {
    pub from: SessionState,
    pub to: SessionState,
}

/// IDLE -> LISTENING -> SPEAKING -> LISTENING ..., SPEAKING -> BARGED_IN ->
/// LISTENING or SPEAKING, and any live state -> TERMINATED.
#[derive(Debug, Clone)]
pub struct SessionMachine {
    state: SessionState,
}

impl Default for SessionMachine {
    fn default() -> Self {
        SessionMachine {
            state: SessionState::Idle,
        }
    }
}

impl SessionMachine {
    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn allowed(from: SessionState, to: SessionState) -> bool {
        use SessionState::*;
        matches!(
            (from, to),
            (Idle, Listening)
                | (Idle, Speaking)
                | (Listening, Speaking)
                | (Speaking, Listening)
                | (Speaking, BargedIn)
                | (BargedIn, Listening)
                | (BargedIn, Speaking)
                | (Idle | Listening | Speaking | BargedIn, Terminated)
        )
    }

    /// Moves to `to`, returning the state left.
    pub fn transition(&mut self, to: SessionState) -> Result<SessionState, InvalidTransition> {
        let from = self.state;
        if !Self::allowed(from, to) {
            return Err(InvalidTransition { from, to });
        }
        self.state = to;
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionState::*;

    #[test]
    fn conversation_cycle_is_allowed() {
        let mut machine = SessionMachine::default();
        for to in [
            Listening, Speaking, Listening, Speaking, BargedIn, Listening, Terminated,
        ] {
            machine.transition(to).expect("allowed");
        }
        assert_eq!(machine.state(), Terminated);
    }

    #[test]
    fn invalid_transitions_are_refused_and_leave_the_state() {
        let mut machine = SessionMachine::default();
        assert!(machine.transition(BargedIn).is_err());
        assert_eq!(machine.state(), Idle);
        machine.transition(Terminated).expect("terminate");
        assert_eq!(
            machine.transition(Listening),
            Err(InvalidTransition {
                from: Terminated,
                to: Listening
            })
        );
        assert!(machine.transition(Terminated).is_err());
    }
}
