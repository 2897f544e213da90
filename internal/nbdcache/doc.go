// Package nbdcache is an NBD server for one raw image file that models a drive's volatile write cache,
// for power-cut tests.
//
// QEMU writing a disk image through the host's page cache keeps every write the guest issued, even when
// QEMU is killed; a real eMMC or SSD loses what sat in its write cache when the power goes. A Server holds
// written sectors in memory until the client flushes (NBD_CMD_FLUSH) or writes with NBD_CMD_FLAG_FUA;
// only then does it write them to the image file, which therefore always holds exactly what the modelled
// drive has made durable. Reads see the cached sectors. PowerCut closes the connections and drops the
// unflushed sectors, or writes back the subset a keep function picks (KeepRandom: a cache that had
// written some of its sectors back, in any order, before the power went). After a cut the server takes
// new connections, so a restarted QEMU sees the disk as it is after the cut.
//
// The cache works in whole sectors (Options.SectorSize, 4 KiB by default): a write covering part of a
// sector reads, modifies and caches the whole sector, and a cut keeps or loses whole sectors. A FUA
// write makes only its own sectors durable, as the NBD spec and the kernel's REQ_FUA define it; other
// unflushed sectors stay volatile. TRIM is modelled as writing zeroes. The model keeps the latest
// content of each unflushed sector only: a drive that wrote back an older version of a sector that was
// written again before the cut is not modelled.
//
// The server speaks the fixed newstyle handshake (NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO with
// NBD_INFO_BLOCK_SIZE, NBD_OPT_LIST, NBD_OPT_ABORT; other options get NBD_REP_ERR_UNSUP) and answers
// READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with simple replies, as doc/proto.md of
// github.com/NetworkBlockDevice/nbd describes. Requests on one connection run concurrently and may be
// answered out of order. Bad requests get NBD error codes (NBD_EINVAL, NBD_ENOSPC); a request header
// without the request magic, which cannot be resynchronised, ends the connection.
//
// # Use with QEMU
//
// Start the server on a unix socket, then attach the export to the guest with a writeback cache:
//
//	-drive file=nbd+unix:///?socket=SOCK,format=raw,if=virtio,cache=writeback
//
// or, with -blockdev:
//
//	-blockdev driver=nbd,node-name=disk0,server.type=unix,server.path=SOCK
//	-device virtio-blk-pci,drive=disk0,write-cache=on
//
// With these the guest's virtio-blk device reports a volatile write cache (/sys/block/vda/queue/
// write_cache reads "write back"), so Linux sends flushes, and QEMU passes each one on as
// NBD_CMD_FLUSH. cache=writeback is also -drive's default. cache=writethrough (or directsync) hides the
// cache from the guest and sends every write with FUA, which leaves nothing for a cut to lose. QEMU's
// NBD driver sends flushes even with cache=unsafe (it implements them as a flush "to the OS", which
// cache.no-flush does not stop), but that is an implementation detail: ask for writeback.
//
// A power cut in a test is: kill QEMU, then call PowerCut, then start QEMU again. Calling PowerCut
// while QEMU still runs is a disk that drops off the bus (QEMU sees its connection close), not a cut.
package nbdcache
