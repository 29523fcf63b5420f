public import CohortCore
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// One writer per results database: `cohort serve` and `cohort simulate` hold this lock for as
/// long as they write, so a second writer refuses at start (naming the process that holds it)
/// instead of "resuming" a live run or interleaving commits with it. Readers (`runs`, `report`)
/// take no lock. The lock is an advisory `flock` on `<database>.lock`, which the kernel drops
/// when the holder exits however it exits (`kill -9` included), so a stale lock cannot block a
/// restart.
public final class DatabaseWriterLock: Sendable {
  public let path: String
  private let descriptor: Int32

  private init(path: String, descriptor: Int32) {
    self.path = path
    self.descriptor = descriptor
  }

  /// Takes the lock of the database at `database` for `holder` (a description of this process
  /// for whoever finds it taken, e.g. the command line). In-memory databases need none.
  public static func acquire(database: String, holder: String) throws(CohortError) -> DatabaseWriterLock? {
    guard database != ":memory:" else { return nil }
    let path = database + ".lock"
    // O_NOFOLLOW: a symlink planted at the lock's name is not followed into another file.
    let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
      let reason = String(cString: strerror(errno))
      throw CohortError(
        .io, "cannot open the database's writer lock \(path): \(reason)",
        fix: "make the directory of --db writable, or remove a symlink at that name")
    }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      let busy = errno == EWOULDBLOCK
      let reason = String(cString: strerror(errno))
      let owner = busy ? readOwner(fd) : ""
      close(fd)
      guard busy else {
        throw CohortError(.io, "cannot lock \(path): \(reason)", fix: "check the file system of --db")
      }
      throw CohortError(
        .storage,
        "the results database \(database) is being written by another process"
          + (owner.isEmpty ? "" : " (\(owner))"),
        fix: "stop that process first, or give this one another --db")
    }
    let line = Array("pid \(getpid()): \(holder)\n".utf8)
    if ftruncate(fd, 0) == 0 {
      _ = line.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }
    return DatabaseWriterLock(path: path, descriptor: fd)
  }

  /// Who holds the lock, as the holder wrote it (at most one short line).
  private static func readOwner(_ fd: Int32) -> String {
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
    guard count > 0 else { return "" }
    return String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  }

  deinit {
    // Closing drops the lock; the file stays (removing it would race a waiting writer).
    close(descriptor)
  }
}
