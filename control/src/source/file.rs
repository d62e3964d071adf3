//! Kamailio `dispatcher.list` files.

use std::path::Path;
use std::time::Instant;

use dataplane::dispatch::{list, Table};

/// Reads and parses a dispatcher list, resolving every destination.
/// Errors come back one per line as `FILE:LINE: problem`.
pub fn load(path: &Path, epoch: Instant, previous: Option<&Table>) -> Result<Table, Vec<String>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{shown}: cannot read dispatcher list: {e}")])?;
    let defs = list::parse_list(&text).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{shown}:{}: {}", e.line, e.message))
            .collect::<Vec<_>>()
    })?;
    let mut resolve = |uri: &str| super::resolve_uri(uri);
    let built = match previous {
        Some(old) => Table::rebuild(old, &defs, &mut resolve),
        None => Table::build(&defs, epoch, &mut resolve),
    };
    built.map_err(|errs| {
        errs.iter()
            .map(|e| format!("{shown}:{}: {}", e.line, e.message))
            .collect()
    })
}
