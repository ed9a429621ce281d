//! Who is on the other end of a connection or request, once authenticated.

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
}

impl Identity {
    pub fn user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            role: Role::User,
            rooms: None,
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
