//! Whose stack update this is. An update is the controller's when the stack's events for it
//! carry the `ClientRequestToken` the controller wrote down before it sent `UpdateStack`; any
//! other update (an operator's `convox rack update`, the console, another tool) is someone
//! else's, and when the events cannot be read, it is not known. Only the controller's own
//! update is ever cancelled.

use crate::model::UpdateToken;

/// Every token the controller sends starts with this.
pub const TOKEN_PREFIX: &str = "rack-reconciler-";

/// Whose the stack's latest update is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Started with the token this controller wrote down.
    Ours,
    /// Someone else's: who, as far as the token tells.
    Theirs(String),
    /// The events could not be read (why), or whose it is was not looked at.
    Unknown(String),
}

impl Ownership {
    pub fn is_ours(&self) -> bool {
        *self == Ownership::Ours
    }

    /// A short description for messages: whose the update is.
    pub fn describe(&self) -> String {
        match self {
            Ownership::Ours => "the controller's own update".to_string(),
            Ownership::Theirs(who) => who.clone(),
            Ownership::Unknown(why) => format!("an update whose owner is not known ({why})"),
        }
    }
}

/// Whose the stack's latest update is, given the token its events carry and the token this
/// controller wrote down for its own latest update (if any).
/// With no token written down, no update can be the controller's, whatever the events say.
pub fn ownership(read: &UpdateToken, ours: Option<&str>) -> Ownership {
    match (read, ours) {
        (UpdateToken::Read(Some(token)), Some(mine)) if token == mine => Ownership::Ours,
        (UpdateToken::Read(token), _) => Ownership::Theirs(someone_else(token.as_deref())),
        (_, None) => Ownership::Theirs(
            "not the controller's (it has no update of its own written down)".into(),
        ),
        (UpdateToken::Unknown(why), Some(_)) => Ownership::Unknown(why.clone()),
        (UpdateToken::NotRead, Some(_)) => {
            Ownership::Unknown("the stack's events were not read".into())
        }
    }
}

fn someone_else(token: Option<&str>) -> String {
    match token {
        None => {
            "someone else's update (started without a ClientRequestToken, as the convox CLI does)"
                .to_string()
        }
        Some(t) if t.starts_with("Console-") => {
            format!("someone else's update (from the AWS console, token {t})")
        }
        Some(t) if t.starts_with(TOKEN_PREFIX) => format!(
            "another controller's update (token {t}, not the one this controller wrote down)"
        ),
        Some(t) => format!("someone else's update (token {t})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, the token read, the token written down, `Ok` for ours or the text of whose.
    type Case = (
        &'static str,
        UpdateToken,
        Option<&'static str>,
        Result<(), &'static str>,
    );

    #[test]
    fn only_the_token_written_down_makes_an_update_ours() {
        let mine = "rack-reconciler-20260418101514-00000000000000aa";
        let read = |t: Option<&str>| UpdateToken::Read(t.map(str::to_string));
        let cases: Vec<Case> = vec![
            ("our token", read(Some(mine)), Some(mine), Ok(())),
            (
                "no token: convox",
                read(None),
                Some(mine),
                Err("convox CLI"),
            ),
            (
                "console",
                read(Some("Console-UpdateStack-7f59c3cf")),
                Some(mine),
                Err("AWS console"),
            ),
            (
                "another controller's token",
                read(Some("rack-reconciler-x-01")),
                Some(mine),
                Err("another controller"),
            ),
            (
                "nothing written down",
                read(Some(mine)),
                None,
                Err("another controller"),
            ),
            (
                "events unreadable, nothing written down: not ours",
                UpdateToken::Unknown("AccessDenied".into()),
                None,
                Err("no update of its own"),
            ),
            (
                "events unreadable",
                UpdateToken::Unknown("AccessDenied".into()),
                Some(mine),
                Err("not known (AccessDenied)"),
            ),
            (
                "not read",
                UpdateToken::NotRead,
                Some(mine),
                Err("not known"),
            ),
        ];
        for (name, token, ours, want) in cases {
            let got = ownership(&token, ours);
            match want {
                Ok(()) => assert_eq!(got, Ownership::Ours, "{name}"),
                Err(text) => {
                    assert!(!got.is_ours(), "{name}");
                    assert!(got.describe().contains(text), "{name}: {}", got.describe());
                }
            }
        }
    }
}
