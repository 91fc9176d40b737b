//! `herald completions` and `herald man`: generated from the clap definition itself, so the
//! completions and the man pages list exactly the subcommands and flags the binary accepts.

use std::io::Write;

use anyhow::{bail, Result};
use clap_complete::Shell;

/// Writes the completion script for `shell`.
pub fn completions(mut cli: clap::Command, shell: Shell, out: &mut impl Write) {
    clap_complete::generate(shell, &mut cli, "herald", out);
}

/// Writes herald(1) in roff, or herald-<sub>(1) for a subcommand (`herald man serve`), the way
/// git splits its pages: each page lists its own flags.
pub fn man(cli: clap::Command, subcommand: Option<&str>, out: &mut impl Write) -> Result<()> {
    let mut cli = cli.name("herald");
    cli.build();
    let page = match subcommand {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                bail!("no subcommand {name:?}");
            };
            let title = format!("herald-{}", sub.get_name());
            let version = cli.get_version().map(|v| v.to_string()).unwrap_or_default();
            sub.clone()
                .name(title.clone())
                .bin_name(title)
                .version(version)
        }
    };
    clap_mangen::Man::new(page).render(out)?;
    Ok(())
}
