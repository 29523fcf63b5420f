public import Foundation

/// IEEE-754 binary32, little-endian, whatever the host's byte order: the one byte format of
/// floats at Cohort's edges. Checkpoint blobs, safetensors `F32` and NPY `<f4` use it, and so do
/// checkpoints and plain updates on the wire (the same bytes a checkpoint's SHA-256 covers).
public enum Float32LittleEndian {
  /// The 4 × `values.count` bytes of `values`.
  public static func bytes(_ values: [Float]) -> [UInt8] {
    #if _endian(little)
      return values.withUnsafeBytes { [UInt8]($0) }
    #else
      return values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { [UInt8]($0) }
    #endif
  }

  /// The bytes of `values` as `Data` (a blob column or a file's body).
  public static func data(_ values: [Float]) -> Data {
    #if _endian(little)
      return values.withUnsafeBytes { Data($0) }
    #else
      return values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
    #endif
  }

  /// The floats in `bytes`, or nil when their count is not a multiple of 4.
  public static func values(_ bytes: some ContiguousBytes) -> [Float]? {
    bytes.withUnsafeBytes { raw in
      guard raw.count % 4 == 0 else { return nil }
      let n = raw.count / 4
      return [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
        for i in 0..<n {
          let bits = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
          buffer[i] = Float(bitPattern: bits)
        }
        initialized = n
      }
    }
  }
}
