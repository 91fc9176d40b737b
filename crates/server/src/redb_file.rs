//! Opening a redb database that the disk history store and the webhook outbox keep under
//! `[history] path`. A file that is not a usable database (torn, garbage, another format) is
//! renamed aside, so an operator can still look at it, and a new one begins; anything else
//! (another process holds it open, permissions) stops the start instead.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, StorageError};

use crate::clock::unix_now_ms;

/// Opens (or creates) `file` in `dir`, setting an unusable file aside first; `what` names
/// the database in the log line (e.g. "history database") and `lost` says what setting it
/// aside costs. Errors are messages for the caller's own error type.
pub fn open_or_replace(file: &Path, what: &str, lost: &str) -> Result<Database, String> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match open(file)? {
        Ok(db) => Ok(db),
        Err(reason) => {
            let aside = set_aside(file)?;
            tracing::warn!(
                file = %file.display(), aside = %aside.display(), %reason,
                "{what} unusable: set aside, {lost}"
            );
            open(file)?
        }
    }
}

/// The inner error says the file is not a usable database: it may be set aside.
fn open(file: &Path) -> Result<Result<Database, String>, String> {
    match Database::create(file) {
        Ok(db) => Ok(Ok(db)),
        Err(
            e @ (DatabaseError::Storage(StorageError::Corrupted(_))
            | DatabaseError::UpgradeRequired(_)
            | DatabaseError::RepairAborted),
        ) => Ok(Err(e.to_string())),
        Err(DatabaseError::Storage(StorageError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(Err(e.to_string()))
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

fn set_aside(file: &Path) -> Result<PathBuf, String> {
    if !file.exists() {
        return Err(format!("cannot create {}", file.display()));
    }
    let aside = file.with_extension(format!("redb.unusable-{}", unix_now_ms()));
    std::fs::rename(file, &aside)
        .map_err(|e| format!("cannot set {} aside: {e}", file.display()))?;
    Ok(aside)
}
