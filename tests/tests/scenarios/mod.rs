//! Integration scenarios over real WebSockets. Each module is one concern.

mod bad_input;
pub mod child;
mod messaging;
mod process;
mod reliability;
