//! The four actions a credential can grant (spec §2), as a compact bit set.

use serde::{Deserialize, Serialize};

/// One operation a connection may be allowed to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
    Presence,
    Send,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Publish,
        Action::Subscribe,
        Action::Presence,
        Action::Send,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Presence => "presence",
            Action::Send => "send",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Action::Publish => 1,
            Action::Subscribe => 2,
            Action::Presence => 4,
            Action::Send => 8,
        }
    }
}

/// A set of [`Action`]s. Copyable so every connection carries its own without sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ActionSet(u8);

impl ActionSet {
    pub const NONE: ActionSet = ActionSet(0);
    pub const ALL: ActionSet = ActionSet(0b1111);

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn with(self, action: Action) -> ActionSet {
        ActionSet(self.0 | action.bit())
    }

    pub fn intersect(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: ActionSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Action> for ActionSet {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        iter.into_iter().fold(ActionSet::NONE, ActionSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let ps: ActionSet = [Action::Publish, Action::Subscribe].into_iter().collect();
        assert!(ps.contains(Action::Publish) && !ps.contains(Action::Send));
        assert!(ps.is_subset_of(ActionSet::ALL));
        assert!(!ActionSet::ALL.is_subset_of(ps));
        assert_eq!(
            ps.intersect(ActionSet::NONE.with(Action::Send)),
            ActionSet::NONE
        );
        assert_eq!(ps.iter().count(), 2);
        assert_eq!(Action::parse("presence"), Some(Action::Presence));
        assert_eq!(Action::parse("Presence"), None);
    }
}
