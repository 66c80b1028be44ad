//! Integration scenarios over real WebSockets. Each module is one concern.

mod bad_input;
mod bot;
pub mod child;
mod cluster;
mod cs;
mod files;
mod limits;
mod messaging;
pub mod process;
mod push;
mod reads;
mod reliability;
mod resume;
mod search;
mod tls;
mod web;
