import CZlib
import CohortCore
import Foundation

/// Reading whole data files into memory, with gzip detected by its magic bytes.
///
/// Loaders parse bytes rather than `String`s: it is several times faster on large files and
/// lets their error messages point at exact byte offsets.
enum DataFile {
  /// Refuse to inflate beyond this many bytes: a corrupt or hostile gzip member must end in an
  /// error, not in the process running out of memory.
  static let maximumInflatedSize = 8 << 30

  /// The whole file, or an `.io` error naming it and the system's reason.
  static func read(_ path: String) throws(CohortError) -> [UInt8] {
    guard let file = fopen(path, "rb") else {
      throw CohortError(.io, "cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var info = stat()
    var bytes: [UInt8] = []
    if fstat(fileno(file), &info) == 0 {
      if (info.st_mode & S_IFMT) == S_IFDIR {
        throw CohortError(.io, "cannot read \(path): it is a directory, expected a data file")
      }
      if info.st_size > 0 { bytes.reserveCapacity(Int(info.st_size)) }
    }
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
      let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
      if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
      if n < chunk.count {
        if ferror(file) != 0 {
          throw CohortError(.io, "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        return bytes
      }
    }
  }

  /// True when `bytes` start with the gzip magic number 1f 8b.
  static func isGzip(_ bytes: [UInt8]) -> Bool {
    bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
  }

  /// The file's bytes, inflated first if it is gzip-compressed.
  static func readMaybeGzipped(_ path: String) throws(CohortError) -> (bytes: [UInt8], gzipped: Bool) {
    let raw = try read(path)
    guard isGzip(raw) else { return (raw, false) }
    return (try gunzip(raw, path: path), true)
  }

  /// Inflates a gzip file (one member or several concatenated, as `gzip` and `cat` make them).
  static func gunzip(_ input: [UInt8], path: String) throws(CohortError) -> [UInt8] {
    var stream = z_stream()
    // 16 + MAX_WBITS: expect a gzip header and trailer rather than a bare zlib stream.
    let initStatus = inflateInit2_(
      &stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
    guard initStatus == Z_OK else {
      throw CohortError(.io, "cannot inflate \(path): zlib initialisation failed (status \(initStatus))")
    }
    defer { inflateEnd(&stream) }

    var output: [UInt8] = []
    output.reserveCapacity(Swift.min(input.count * 4, maximumInflatedSize))
    var buffer = [UInt8](repeating: 0, count: 1 << 18)
    // The loop runs inside the pointer closures and reports a failure as a message, thrown below.
    let failure: String? = input.withUnsafeBufferPointer { inp -> String? in
      guard let base = inp.baseAddress else { return "the file is empty" }
      var consumed = 0
      while true {
        let offered = Swift.min(inp.count - consumed, 1 << 30)
        stream.next_in = UnsafeMutablePointer(mutating: base + consumed)
        stream.avail_in = UInt32(offered)
        let (status, produced) = buffer.withUnsafeMutableBufferPointer { out -> (Int32, Int) in
          stream.next_out = out.baseAddress
          stream.avail_out = UInt32(out.count)
          let status = inflate(&stream, Z_NO_FLUSH)
          return (status, out.count - Int(stream.avail_out))
        }
        consumed += offered - Int(stream.avail_in)
        if produced > 0 {
          if output.count + produced > maximumInflatedSize {
            return "inflates to more than \(maximumInflatedSize) bytes; refusing to continue"
          }
          output.append(contentsOf: buffer[0..<produced])
        }
        switch status {
        case Z_OK:
          continue
        case Z_STREAM_END:
          if consumed == inp.count { return nil }
          // Another gzip member may follow; anything else is trailing garbage.
          if inp.count - consumed >= 2 && inp[consumed] == 0x1F && inp[consumed + 1] == 0x8B {
            inflateReset(&stream)
            continue
          }
          return "unexpected bytes after the gzip stream at compressed byte offset \(consumed)"
        case Z_BUF_ERROR where consumed == inp.count:
          return "the gzip stream ends early (truncated file?) after \(inp.count) compressed bytes"
        case Z_BUF_ERROR:
          continue
        default:
          let reason = stream.msg.map { String(cString: $0) } ?? "zlib status \(status)"
          return "corrupt gzip data near compressed byte offset \(consumed): \(reason)"
        }
      }
    }
    if let failure {
      throw CohortError(.invalidData, "\(path): \(failure)", fix: "re-download or re-compress the file")
    }
    return output
  }
}
