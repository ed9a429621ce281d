//! The seeds' own HTTP surface, for pages written against them: seed 001's and 004's event
//! streams and notification routes (`events`), seed 003's polling mailboxes (`mailbox`).

pub mod events;
pub mod mailbox;
