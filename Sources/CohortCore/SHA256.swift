import CSodium
public import Foundation

/// SHA-256 through libsodium (`crypto_hash_sha256`), the project's only source of cryptography.
public enum SHA256 {
  /// The digest of `bytes`, 32 bytes.
  public static func digest(_ bytes: some ContiguousBytes) -> [UInt8] {
    bytes.withUnsafeBytes { digest(rawBuffer: $0) }
  }

  /// The digest of `bytes` as 64 lowercase hexadecimal digits.
  public static func hex(_ bytes: some ContiguousBytes) -> String {
    hexString(digest(bytes))
  }

  /// The digest of the bytes in `buffer` as 64 lowercase hexadecimal digits.
  public static func hex(_ buffer: UnsafeRawBufferPointer) -> String {
    hexString(digest(rawBuffer: buffer))
  }

  static func digest(rawBuffer buffer: UnsafeRawBufferPointer) -> [UInt8] {
    Sodium.ready()
    var out = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_BYTES))
    let status = out.withUnsafeMutableBufferPointer { o in
      // A zero-length buffer may have a nil base address; libsodium reads nothing then.
      let input = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
      return crypto_hash_sha256(o.baseAddress!, input, UInt64(buffer.count))
    }
    precondition(status == 0, "crypto_hash_sha256 failed")
    return out
  }

  static func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var chars: [UInt8] = []
    chars.reserveCapacity(bytes.count * 2)
    for b in bytes {
      chars.append(digits[Int(b >> 4)])
      chars.append(digits[Int(b & 0x0f)])
    }
    return String(decoding: chars, as: UTF8.self)
  }
}

/// libsodium must be initialised once before use; `sodium_init` is itself safe to call again,
/// and Swift runs a global's initialiser exactly once, on first use, under a lock.
enum Sodium {
  private static let initialised: Bool = sodium_init() >= 0

  static func ready() {
    precondition(initialised, "libsodium could not be initialised (sodium_init failed)")
  }
}

extension Weights {
  /// SHA-256 of the parameters as stored and sent: the `values` as IEEE-754 binary32
  /// (Float32) in little-endian byte order, laid end to end in layout order, nothing else (the
  /// layout is not hashed). This is the digest of a checkpoint blob and of a safetensors
  /// file's data section, so any of them can be checked against the others.
  public var sha256: String {
    #if _endian(little)
      return values.withUnsafeBytes { SHA256.hex($0) }
    #else
      return SHA256.hex(values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Array($0) })
    #endif
  }
}

extension Plan {
  /// The plan as canonical JSON: `JSONEncoder` with sorted keys, so equal plans give equal
  /// bytes. Non-finite numbers (which validation never lets through) are written as strings.
  public var canonicalJSON: Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.nonConformingFloatEncodingStrategy = .convertToString(
      positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    // Encoding plain Codable structs of numbers, strings and enums cannot fail once
    // non-finite floats have a representation.
    return try! encoder.encode(self)
  }

  /// SHA-256 of `canonicalJSON`: the plan's identity in the results store and on the wire.
  public var sha256: String { SHA256.hex(canonicalJSON) }

  /// The plan as devices receive it (`Task.plan_json`): `canonicalJSON` without what only the
  /// server reads (`model.initial`, a path on the server's disk; the device gets the model as the
  /// round's checkpoint). The same bytes as `canonicalJSON` for a plan without it.
  public var deviceJSON: Data {
    var plan = self
    plan.model.initial = nil
    return plan.canonicalJSON
  }
}
