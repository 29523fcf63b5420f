import Foundation

/// IEEE-754 binary32, little-endian: the byte format of checkpoint blobs, safetensors `F32`
/// and NPY `<f4`, whatever the host's byte order.
enum Float32LE {
  static func bytes(_ values: [Float]) -> Data {
    #if _endian(little)
      return values.withUnsafeBytes { Data($0) }
    #else
      return values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
    #endif
  }

  /// The floats in `data`, or nil when its size is not a multiple of 4.
  static func values(_ data: Data) -> [Float]? {
    guard data.count % 4 == 0 else { return nil }
    let n = data.count / 4
    let floats = [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
      data.withUnsafeBytes { raw in
        for i in 0..<n {
          let bits = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
          buffer[i] = Float(bitPattern: bits)
        }
      }
      initialized = n
    }
    return floats
  }
}
