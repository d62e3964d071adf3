//! Kamailio `dispatcher.list` files.

use std::path::Path;
use std::time::Instant;

use dataplane::dispatch::list::{self, DestDef};
use dataplane::dispatch::Table;

/// Reads and parses a dispatcher list, resolving every destination.
/// Errors come back one per line as `FILE:LINE: problem`.
pub fn load(path: &Path, epoch: Instant, previous: Option<&Table>) -> Result<Table, Vec<String>> {
    let shown = path.display().to_string();
    let text = read(path).map_err(|e| vec![e])?;
    let defs = parse_lines(path, &text)?;
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

/// Reads a dispatcher list; the error names the file.
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read dispatcher list: {e}", path.display()))
}

/// Parses a dispatcher list's text; every problem as `FILE:LINE: problem`.
fn parse_lines(path: &Path, text: &str) -> Result<Vec<DestDef>, Vec<String>> {
    list::parse_list(text).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
            .collect()
    })
}

/// [`parse_lines`] with the problems joined, one per line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<DestDef>, String> {
    parse_lines(path, text).map_err(|e| e.join("\n"))
}
