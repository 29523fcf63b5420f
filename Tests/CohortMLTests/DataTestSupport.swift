import CZlib
import CohortCore
import CohortML
import CohortTesting
import Foundation
import Testing

/// The error `body` throws, or nil if it returns.
func dataError<T>(_ body: () throws(CohortError) -> T) -> CohortError? {
  do {
    _ = try body()
    return nil
  } catch {
    return error
  }
}

/// gzip-compresses `bytes` with zlib (deflateInit2 with 16 + MAX_WBITS writes a gzip wrapper).
func gzip(_ bytes: [UInt8]) -> [UInt8] {
  var stream = z_stream()
  let status = deflateInit2_(
    &stream, Z_BEST_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
    Int32(MemoryLayout<z_stream>.size))
  precondition(status == Z_OK, "deflateInit2 failed: \(status)")
  defer { deflateEnd(&stream) }
  var input = bytes
  var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(bytes.count))) + 64)
  let written = input.withUnsafeMutableBufferPointer { inp in
    output.withUnsafeMutableBufferPointer { out -> Int in
      stream.next_in = inp.baseAddress
      stream.avail_in = UInt32(inp.count)
      stream.next_out = out.baseAddress
      stream.avail_out = UInt32(out.count)
      let result = deflate(&stream, Z_FINISH)
      precondition(result == Z_STREAM_END, "deflate did not finish: \(result)")
      return out.count - Int(stream.avail_out)
    }
  }
  return Array(output[0..<written])
}

/// The digits dataset shipped in the package, found relative to this source file.
let digitsPath = repositoryRoot.appendingPathComponent("Datasets/digits.csv").path

/// Examples per class among `indices`.
func labelCounts(_ labels: [Int32], _ indices: [Int], classes: Int) -> [Int] {
  var counts = [Int](repeating: 0, count: classes)
  for i in indices { counts[Int(labels[i])] += 1 }
  return counts
}
