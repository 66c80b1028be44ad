//! Message search's text side, shared by every backend and free of I/O:
//! [`analyze`] turns text into the terms an index stores, [`query`] turns
//! what a person types into clauses, and [`matcher`] decides whether a
//! message matches and marks its snippet. An index only proposes
//! candidates; the matcher, run on the message as stored now, decides.

pub mod analyze;
pub mod matcher;
pub mod query;

pub use analyze::{Token, terms, tokens};
pub use matcher::{Part, find, matches, snippet};
pub use query::{Clause, QueryError, parse};
