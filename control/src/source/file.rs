//! Kamailio `dispatcher.list` files.

use std::path::Path;
use std::time::Instant;

use dataplane::dispatch::list::{self, DestDef};
use dataplane::dispatch::Table;

use super::resolve::{self, Expanded};
use crate::dns::Resolver;

/// Reads and parses a dispatcher list, resolving every destination through
/// `dns`. Returns the table with the definitions as read and as resolved.
/// Errors come back one per line as `FILE:LINE: problem`.
pub async fn load(
    path: &Path,
    epoch: Instant,
    dns: &Resolver,
) -> Result<(Table, Vec<DestDef>, Expanded), Vec<String>> {
    let shown = path.display().to_string();
    let text = read(path).map_err(|e| vec![e])?;
    let defs = parse_lines(path, &text)?;
    let lines = |errs: Vec<list::ListError>| -> Vec<String> {
        errs.iter()
            .map(|e| format!("{shown}:{}: {}", e.line, e.message))
            .collect()
    };
    let expanded = resolve::expand(&defs, dns).await.map_err(lines)?;
    let table = resolve::build(&expanded, epoch, None).map_err(lines)?;
    Ok((table, defs, expanded))
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
