//! The FUSE `Filesystem`: read-only operations over a manifest, reads through the
//! tiered chunk reader.

use crate::errno::{errno_of, FsError};
use crate::inodes::{file_type, from_fuse, to_fuse, InodeTable};
use crate::passthrough::Passthrough;
use crate::reads::{ReadData, ReadState};
use crate::stats::{FsStats, Op};
use crate::trace::TraceRecorder;
use fuser::{
    AccessFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use thaw_core::{ImageId, InodeKind, Manifest};
use thaw_store::ChunkReader;

/// The fraction of an image a mount serves before it fetches the rest in bulk.
pub const DEFAULT_BULK_AFTER: f64 = 0.25;

/// Tunables of a mounted image.
#[derive(Debug, Clone, Copy)]
pub struct FsConfig {
    /// How long the kernel may cache entries and attributes (the image is immutable).
    pub ttl: Duration,
    /// A read that cannot be served within this time fails with EIO.
    pub read_timeout: Duration,
    /// Largest readahead window for sequential readers, in bytes (0 disables it).
    pub readahead_max: u64,
    /// Once the mount has served this fraction of the image's file bytes, fetch the rest
    /// in the background at prefetch priority, in large requests (`None`: never). A
    /// workload that reads most of an image (a package check, a full import) is then not
    /// served one miss at a time. Only with a disk cache that holds the image.
    pub bulk_after: Option<f64>,
    /// Serve opens of files held whole in the node's whole-file cache through FUSE
    /// passthrough (the kernel reads the local file; see [`crate::passthrough`]). Needs a
    /// reader with a whole-file cache, the kernel's support and `CAP_SYS_ADMIN`; without
    /// them every file is served through reads.
    pub passthrough: bool,
    /// Files smaller than this are never passed through.
    pub passthrough_min: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            ttl: Duration::from_secs(24 * 3600),
            read_timeout: Duration::from_secs(60),
            readahead_max: 32 << 20,
            bulk_after: Some(DEFAULT_BULK_AFTER),
            passthrough: true,
            passthrough_min: crate::passthrough::DEFAULT_PASSTHROUGH_MIN,
        }
    }
}

/// State shared by the FUSE threads and the mount's owner.
#[derive(Debug)]
pub struct FsShared {
    pub manifest: Arc<Manifest>,
    pub image: ImageId,
    pub reader: Arc<ChunkReader>,
    pub stats: Arc<FsStats>,
    pub trace: Option<TraceRecorder>,
    pub(crate) table: InodeTable,
    pub(crate) config: FsConfig,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) handles: Mutex<HashMap<u64, ReadState>>,
    next_handle: AtomicU64,
    /// Set once opens are answered "not implemented" (see [`FsShared::stop_open_requests`]).
    opens_stopped: AtomicBool,
    /// Whether any inode has an extended attribute.
    has_xattrs: bool,
    pub(crate) passthrough: Passthrough,
}

/// The filesystem handed to `fuser`; cheap to clone.
#[derive(Debug, Clone)]
pub struct ThawFs {
    pub(crate) shared: Arc<FsShared>,
}

impl ThawFs {
    /// The filesystem of `image`, reading through `reader` on the runtime `rt`; records a start-up trace to `trace` if given.
    pub fn new(
        manifest: Arc<Manifest>,
        image: ImageId,
        reader: Arc<ChunkReader>,
        config: FsConfig,
        trace: Option<std::path::PathBuf>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let table = InodeTable::new(&manifest);
        let has_xattrs = manifest.inodes.iter().any(|i| !i.meta.xattrs.is_empty());
        let trace = trace.map(|p| TraceRecorder::new(image, p));
        // A trace must see every read, and passthrough reads bypass thaw.
        let stats = Arc::new(FsStats::for_inodes(manifest.inodes.len()));
        let passthrough = Passthrough::new(
            config.passthrough && trace.is_none(),
            config.passthrough_min,
            &reader,
            &stats,
            &rt,
        );
        ThawFs {
            shared: Arc::new(FsShared {
                manifest,
                image,
                reader,
                stats,
                trace,
                table,
                config,
                rt,
                handles: Mutex::default(),
                next_handle: AtomicU64::new(1),
                opens_stopped: AtomicBool::new(false),
                has_xattrs,
                passthrough,
            }),
        }
    }

    /// The state the FUSE threads share (manifest, reader, counters).
    pub fn shared(&self) -> &Arc<FsShared> {
        &self.shared
    }
}

impl FsShared {
    /// From now on, opens are answered "not implemented", which the kernel remembers for
    /// the connection: it opens files itself, and sends reads with no handle.
    pub(crate) fn stop_open_requests(&self) {
        self.opens_stopped.store(true, Relaxed);
    }

    fn ino(&self, ino: INodeNo) -> Result<u32, FsError> {
        from_fuse(ino, self.manifest.inodes.len()).ok_or(FsError::NotFound)
    }

    fn attr(&self, ino: u32) -> FileAttr {
        self.table.attr(&self.manifest, ino)
    }

    /// A directory's listing from `offset` on: `.`, `..`, then its entries, each with the
    /// offset that resumes after it (1 after `.`, 2 after `..`, k + 3 after entry k).
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, u32, &[u8])> + '_, FsError> {
        let i = self.ino(ino)?;
        let InodeKind::Directory { entries } = &self.manifest.inodes[i as usize].kind else {
            return Err(FsError::NotADirectory);
        };
        let specials = [(i, &b"."[..]), (self.table.parents[i as usize], &b".."[..])];
        let all = specials
            .into_iter()
            .chain(entries.iter().map(|e| (e.inode, e.name.as_slice())));
        Ok(all
            .enumerate()
            .skip(offset as usize)
            .map(|(k, (child, name))| (k as u64 + 1, child, name)))
    }

    fn xattr_reply(&self, bytes: &[u8], size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(bytes.len() as u32);
        } else if (size as usize) < bytes.len() {
            reply.error(errno_of(&FsError::BufferTooSmall {
                given: size,
                needed: bytes.len(),
            }));
        } else {
            reply.data(bytes);
        }
    }
}

thread_local! {
    /// Per FUSE worker: the buffer reads spanning chunks are assembled in.
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Filesystem for ThawFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for what helps a read-only image; the kernel may refuse some, which is fine.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_readahead(1 << 20);
        // Passthrough needs a stack depth of at least 1; exactly 1 keeps the mount usable
        // under overlayfs (`--writable`, `thaw run`), with backing files not on overlayfs.
        let p = &self.shared.passthrough;
        if p.wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            p.set_negotiated();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Lookup);
        let found = s
            .ino(parent)
            .and_then(|p| match &s.manifest.inodes[p as usize].kind {
                InodeKind::Directory { .. } => s
                    .manifest
                    .lookup(p, name.as_bytes())
                    .ok_or(FsError::NotFound),
                _ => Err(FsError::NotADirectory),
            });
        match found {
            Ok(ino) => reply.entry(&s.config.ttl, &s.attr(ino), Generation(0)),
            // The image never changes, so a name it lacks stays missing: the kernel may
            // remember that as long as the names it has (a negative entry: inode 0 with a
            // timeout), instead of asking again for every `stat` of it.
            Err(FsError::NotFound) => {
                let mut attr = s.attr(0);
                attr.ino = INodeNo(0);
                reply.entry(&s.config.ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Getattr);
        match s.ino(ino) {
            Ok(i) => reply.attr(&s.config.ttl, &s.attr(i)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Readlink);
        match s.ino(ino).map(|i| &s.manifest.inodes[i as usize].kind) {
            Ok(InodeKind::Symlink { target }) => reply.data(target),
            Ok(_) => reply.error(errno_of(&FsError::NotASymlink)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Open);
        let i = match s.ino(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(errno_of(&e)),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(errno_of(&FsError::ReadOnly));
        }
        s.stats.opened.mark(i);
        if s.opens_stopped.load(Relaxed) {
            return reply.error(errno_of(&FsError::OpensNotNeeded));
        }
        let fh = s.next_handle.fetch_add(1, Relaxed);
        s.handles.lock().insert(fh, ReadState::default());
        match s.open_passthrough(i, &reply) {
            Some(backing) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            // The image never changes: the page cache may outlive this open.
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Read);
        READ_SCRATCH.with_borrow_mut(|scratch| {
            match s
                .ino(ino)
                .and_then(|i| s.read(i, fh.0, offset, size, scratch))
            {
                Ok(ReadData::Chunk(data)) => reply.data(&data),
                Ok(ReadData::Scratch) => reply.data(scratch),
                Err(e) => {
                    s.stats.read_errors.fetch_add(1, Relaxed);
                    tracing::warn!(ino = ino.0, offset, size, error = %e, "read failed");
                    reply.error(errno_of(&e));
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _timer = self.shared.stats.start(Op::Flush);
        reply.error(errno_of(&FsError::NothingToFlush));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.shared;
        let served = s.handles.lock().remove(&fh.0).map_or(0, |r| r.served());
        reply.ok();
        // After the reply: a successor must never count fewer opens than the kernel has.
        if let Ok(i) = s.ino(ino) {
            s.release_passthrough(i, served);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Opendir);
        match s.ino(ino).map(|i| &s.manifest.inodes[i as usize].kind) {
            // The kernel then keeps listings cached (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR,
            // its default without opendir) and sends readdir with no handle.
            Ok(InodeKind::Directory { .. }) => {
                reply.error(errno_of(&FsError::StatelessDirectories))
            }
            Ok(_) => reply.error(errno_of(&FsError::NotADirectory)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Readdir);
        match s.listing(ino, offset) {
            Ok(entries) => {
                for (next, child, name) in entries {
                    let kind = file_type(&s.manifest.inodes[child as usize].kind);
                    if reply.add(to_fuse(child), next, kind, OsStr::from_bytes(name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Readdirplus);
        match s.listing(ino, offset) {
            Ok(entries) => {
                for (next, child, name) in entries {
                    if reply.add(
                        to_fuse(child),
                        next,
                        OsStr::from_bytes(name),
                        &s.config.ttl,
                        &s.attr(child),
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Getxattr);
        if !s.has_xattrs {
            // The kernel remembers ENOSYS and answers later getxattr calls itself
            // (EOPNOTSUPP) with no round trip: `ls -l` asks two per file otherwise.
            return reply.error(errno_of(&FsError::NoXattrsInImage));
        }
        let i = match s.ino(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(errno_of(&e)),
        };
        match s.manifest.inodes[i as usize]
            .meta
            .xattrs
            .iter()
            .find(|x| x.name == name.as_bytes())
        {
            Some(x) => s.xattr_reply(&x.value, size, reply),
            None => reply.error(errno_of(&FsError::NoXattr)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Listxattr);
        let i = match s.ino(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let mut names = Vec::new();
        for x in &s.manifest.inodes[i as usize].meta.xattrs {
            names.extend_from_slice(&x.name);
            names.push(0);
        }
        s.xattr_reply(&names, size, reply);
    }

    /// Container runtimes and tools ask for inode flags; fuser's default logs a warning
    /// for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno_of(&FsError::NoIoctl));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Statfs);
        let blocks = s.table.total_bytes.div_ceil(4096);
        reply.statfs(
            blocks,
            0,
            0,
            s.manifest.inodes.len() as u64,
            0,
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let s = &self.shared;
        let _timer = s.stats.start(Op::Access);
        match s.ino(ino) {
            Err(e) => reply.error(errno_of(&e)),
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(errno_of(&FsError::ReadOnly)),
            Ok(_) => reply.ok(),
        }
    }
}
