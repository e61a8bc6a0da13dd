//! Serving again a mount whose owner died while a holder kept its connection: the
//! connection taken from the holder, the dead owner's open table taken over, and the
//! requests it left unanswered asked for again.

use super::{fuse_config, io, MountError, MountHandle, MountOptions};
use crate::fs::ThawFs;
use crate::registry::MountRecord;
use crate::takeover::TakeoverError;
use std::os::fd::AsFd;

/// Serves again a mount whose owner died while a holder kept its connection (see
/// [`crate::takeover`]): takes the connection from the holder, serves it with `fs` (the
/// same image, so the same inode numbers), and has the kernel resend the requests the
/// dead owner left unanswered. The overlay or bind mount above it is still in place.
pub fn adopt(
    fs: ThawFs,
    record: &MountRecord,
    options: &MountOptions,
) -> Result<MountHandle, MountError> {
    let holder = record
        .holder
        .ok_or(TakeoverError::HolderGone(record.owner.pid))?;
    let fuse = crate::takeover::take(holder, crate::takeover::HOLDER_FD)?;
    if record.passthrough {
        fs.shared().passthrough.set_negotiated();
    }
    let config = fuse_config(&fs, options);
    let session = fuser::Session::from_initialized_fd(fs.clone(), fuse, config.acl, config);
    resume_opens(&fs, &session, record, options)?;
    if let Err(e) = crate::takeover::resend_pending(session.as_fd()) {
        tracing::warn!(mountpoint = %record.fuse_dir.display(), error = %e, "the kernel did not resend what the dead owner left unanswered: those callers wait until the mount ends");
    }
    let session = session
        .spawn()
        .map_err(io("start the FUSE threads of", &record.fuse_dir))?;
    Ok(MountHandle {
        fs,
        session: Some(session),
        mountpoint: record.mountpoint.clone(),
        fuse_dir: record.fuse_dir.clone(),
        top_layer: record.mountpoint != record.fuse_dir,
        holder: Some(holder),
    })
}

/// Takes over the open table the dead owner left, before any request is served; without
/// one (a mount that never negotiated passthrough needs none), starts a new one.
fn resume_opens(
    fs: &ThawFs,
    session: &fuser::Session<ThawFs>,
    record: &MountRecord,
    options: &MountOptions,
) -> Result<(), MountError> {
    let Some(path) = &options.open_table else {
        return Ok(());
    };
    let inodes = fs.shared().manifest.inodes.len();
    let passthrough = &fs.shared().passthrough;
    match crate::opens::OpenTable::resume(path, inodes) {
        // SAFETY: the predecessor opened each recorded id on this connection and had not
        // closed it when it recorded it (it records a release before closing), and each
        // inode's id is recorded, and so wrapped, once.
        Ok((table, live)) => {
            passthrough.resume(table, live, |id| unsafe { session.wrap_backing(id) })
        }
        Err(e) => {
            if record.passthrough {
                tracing::warn!(path = %path.display(), error = %e, "no open table from the dead owner: opens of files it had open may fail");
            }
            let table = crate::opens::OpenTable::create(path, inodes)
                .map_err(io("create the open table", path))?;
            passthrough.attach(table);
        }
    }
    Ok(())
}
