//! `logpipe-cep`: complex event processing over the clean topics.
mod condition;
mod counter;
mod decode;
mod event;
mod expr;
mod field;
mod matches;
mod rule;
mod rules_store;
mod ruleset;
mod state;

pub struct CepService;
