//! `logpipe-cep`: complex event processing over the clean topics.
mod condition;
mod counter;
mod event;
mod expr;
mod field;
mod rule;

pub struct CepService;
