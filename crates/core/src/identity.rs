//! Who is on the other end of a connection or request, once authenticated.

/// Characters refused in ids, names and room names: control characters, and the bidirectional
/// controls that make text display in another order than it is stored (a name that shows as
/// `alice` but is not).
pub fn is_unsafe_in_name(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An end user: publishes as itself, sees its own `user.*` events only.
    User,
    /// An operator (the dashboard's admin token): sees everything, may publish as anyone.
    Admin,
    /// A backend holding a server-side API key: may publish as any user.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub role: Role,
    /// The rooms a token grants (names or `prefix*` patterns); `None` when it does not limit them.
    pub rooms: Option<Vec<String>>,
    /// When the credentials expire (Unix seconds, leeway included): a session bound to them
    /// ends then. `None` for API keys.
    pub expires_at: Option<i64>,
}

impl Identity {
    pub fn user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            role: Role::User,
            rooms: None,
            expires_at: None,
        }
    }

    pub fn with_role(user_id: impl Into<String>, role: Role) -> Self {
        Self {
            role,
            ..Self::user(user_id)
        }
    }

    /// Admins and services may act for others and read every user's private events.
    pub fn is_privileged(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Service)
    }

    pub fn may_read_private_of(&self, user_id: Option<&str>) -> bool {
        self.is_privileged() || user_id == Some(self.user_id.as_str())
    }
}
