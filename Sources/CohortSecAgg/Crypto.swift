import CSodium

/// The libsodium primitives secure aggregation uses, and nothing else: X25519 key agreement,
/// `crypto_kdf` subkeys, ChaCha20 (IETF) mask expansion, XChaCha20-Poly1305 share encryption and
/// Ed25519 signatures. Every secret passes through here, so zeroing lives here too.
public enum SecAggCrypto {
  /// Bytes in a key, a seed or a shared secret.
  public static let keyBytes = 32
  /// Bytes in an Ed25519 signature.
  public static let signatureBytes = Int(crypto_sign_BYTES)
  /// Bytes the AEAD adds to a plaintext.
  public static let aeadOverhead = Int(crypto_aead_xchacha20poly1305_ietf_ABYTES)

  private static let initialised: Bool = sodium_init() >= 0

  static func ready() {
    precondition(initialised, "libsodium could not be initialised (sodium_init failed)")
  }

  /// Overwrites `bytes` with zeros in a way the compiler cannot elide (`sodium_memzero`).
  public static func zero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { b in
      if let base = b.baseAddress { sodium_memzero(base, b.count) }
    }
  }

  /// Overwrites `words` with zeros (`sodium_memzero`).
  public static func zero(_ words: inout [UInt64]) {
    words.withUnsafeMutableBytes { b in
      if let base = b.baseAddress { sodium_memzero(base, b.count) }
    }
  }

  /// Constant-time equality of two secrets of the same length (`sodium_memcmp`).
  public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { x in
      b.withUnsafeBytes { y in sodium_memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 }
    }
  }

  /// 32 bytes from the operating system's CSPRNG (`randombytes_buf`): the root secret of a real
  /// device's participation. Simulations pass seeds of their own instead, so runs replay.
  public static func randomSeed() -> [UInt8] {
    ready()
    var out = [UInt8](repeating: 0, count: keyBytes)
    out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, keyBytes) }
    return out
  }

  /// A 32-byte subkey of `key` for one purpose (`crypto_kdf_derive_from_key`). `context` must be
  /// exactly 8 ASCII characters; distinct purposes use distinct contexts or ids.
  public static func subkey(of key: [UInt8], id: UInt64, context: StaticString) -> [UInt8] {
    ready()
    precondition(key.count == keyBytes && context.utf8CodeUnitCount == 8)
    var out = [UInt8](repeating: 0, count: keyBytes)
    let status = out.withUnsafeMutableBufferPointer { o in
      key.withUnsafeBufferPointer { k in
        context.withUTF8Buffer { c in
          c.withMemoryRebound(to: CChar.self) { cc in
            crypto_kdf_derive_from_key(o.baseAddress!, keyBytes, id, cc.baseAddress!, k.baseAddress!)
          }
        }
      }
    }
    precondition(status == 0, "crypto_kdf_derive_from_key failed")
    return out
  }

  /// An X25519 key pair from a 32-byte seed: the secret is the seed hashed (as libsodium's
  /// `crypto_box_seed_keypair` does), the public key its scalar multiple of the base point.
  public static func keyAgreementPair(seed: [UInt8]) -> (publicKey: [UInt8], secretKey: [UInt8]) {
    ready()
    precondition(seed.count == keyBytes)
    var pk = [UInt8](repeating: 0, count: keyBytes)
    var sk = [UInt8](repeating: 0, count: keyBytes)
    let status = pk.withUnsafeMutableBufferPointer { p in
      sk.withUnsafeMutableBufferPointer { s in
        seed.withUnsafeBufferPointer {
          crypto_box_seed_keypair(p.baseAddress!, s.baseAddress!, $0.baseAddress!)
        }
      }
    }
    precondition(status == 0, "crypto_box_seed_keypair failed")
    return (pk, sk)
  }

  /// The public key belonging to an X25519 secret key: lets the server check a reconstructed key.
  public static func publicKey(ofSecret secret: [UInt8]) -> [UInt8]? {
    ready()
    guard secret.count == keyBytes else { return nil }
    var pk = [UInt8](repeating: 0, count: keyBytes)
    let status = pk.withUnsafeMutableBufferPointer { p in
      secret.withUnsafeBufferPointer { crypto_scalarmult_base(p.baseAddress!, $0.baseAddress!) }
    }
    return status == 0 ? pk : nil
  }

  /// The agreed key between two parties: X25519 of one's secret and the other's public key,
  /// hashed with both public keys in a fixed order so both ends derive the same 32 bytes. Nil
  /// when the peer's key is a low-order point (the shared point would be all zeros).
  public static func agree(
    secretKey: [UInt8], ownPublicKey: [UInt8], peerPublicKey: [UInt8], ownIndex: UInt32, peerIndex: UInt32
  ) -> [UInt8]? {
    ready()
    guard secretKey.count == keyBytes, peerPublicKey.count == keyBytes else { return nil }
    var shared = [UInt8](repeating: 0, count: keyBytes)
    defer { zero(&shared) }
    let status = shared.withUnsafeMutableBufferPointer { s in
      secretKey.withUnsafeBufferPointer { k in
        peerPublicKey.withUnsafeBufferPointer {
          crypto_scalarmult(s.baseAddress!, k.baseAddress!, $0.baseAddress!)
        }
      }
    }
    guard status == 0 else { return nil }
    let (first, second) = ownIndex < peerIndex ? (ownPublicKey, peerPublicKey) : (peerPublicKey, ownPublicKey)
    var material = shared + first + second
    defer { zero(&material) }
    var out = [UInt8](repeating: 0, count: keyBytes)
    _ = out.withUnsafeMutableBufferPointer { o in
      material.withUnsafeBufferPointer {
        crypto_generichash(o.baseAddress!, keyBytes, $0.baseAddress!, UInt64($0.count), nil, 0)
      }
    }
    return out
  }

  /// Adds (`sign` = +1) or subtracts (`sign` = -1) the ChaCha20 keystream of `key` to `vector`,
  /// word by word in Z/2^32 (little-endian words). The keystream is made in blocks that stay in
  /// cache, so expanding a mask costs one pass over the vector.
  public static func addMask(key: [UInt8], sign: Int32, into vector: inout [UInt32]) {
    ready()
    precondition(key.count == keyBytes)
    let blockWords = 4096
    var block = [UInt32](repeating: 0, count: blockWords)
    defer { block.withUnsafeMutableBytes { sodium_memzero($0.baseAddress!, $0.count) } }
    let nonce = [UInt8](repeating: 0, count: Int(crypto_stream_chacha20_ietf_NONCEBYTES))
    var counter: UInt32 = 0
    let total = vector.count
    key.withUnsafeBufferPointer { k in
      nonce.withUnsafeBufferPointer { n in
        vector.withUnsafeMutableBufferPointer { v in
          block.withUnsafeMutableBufferPointer { b in
            var start = 0
            while start < total {
              let count = min(blockWords, total - start)
              // 64-byte ChaCha20 blocks: 4096 words are exactly 256 of them, so `counter`
              // continues the one keystream across blocks.
              _ = crypto_stream_chacha20_ietf_xor_ic(
                UnsafeMutableRawPointer(b.baseAddress!).assumingMemoryBound(to: UInt8.self),
                UnsafeRawPointer(zeroBlock).assumingMemoryBound(to: UInt8.self),
                UInt64(count * 4), n.baseAddress!, counter, k.baseAddress!)
              counter &+= UInt32(blockWords * 4 / 64)
              // Raw pointers keep the loop free of checks, so it vectorises.
              let target = v.baseAddress! + start
              let words = UnsafePointer(b.baseAddress!)
              #if _endian(big)
                for i in 0..<count { b[i] = UInt32(littleEndian: b[i]) }
              #endif
              if sign >= 0 {
                for i in 0..<count { target[i] &+= words[i] }
              } else {
                for i in 0..<count { target[i] &-= words[i] }
              }
              start += count
            }
          }
        }
      }
    }
  }

  /// A read-only block of zeros that the keystream is XORed into.
  // Never written after initialisation, so sharing it between threads is safe.
  nonisolated(unsafe) private static let zeroBlock: UnsafeMutableRawPointer = {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 4096 * 4, alignment: 16)
    p.initializeMemory(as: UInt8.self, repeating: 0, count: 4096 * 4)
    return p
  }()

  /// `count` pseudo-random bytes from `key` (ChaCha20 IETF, zero nonce): a deterministic secret
  /// stream for Shamir coefficients and other values derived from a device's root seed.
  public static func stream(key: [UInt8], count: Int) -> [UInt8] {
    ready()
    precondition(key.count == keyBytes)
    var out = [UInt8](repeating: 0, count: count)
    guard count > 0 else { return out }
    let nonce = [UInt8](repeating: 0, count: Int(crypto_stream_chacha20_ietf_NONCEBYTES))
    _ = out.withUnsafeMutableBufferPointer { o in
      key.withUnsafeBufferPointer { k in
        nonce.withUnsafeBufferPointer {
          crypto_stream_chacha20_ietf(o.baseAddress!, UInt64(count), $0.baseAddress!, k.baseAddress!)
        }
      }
    }
    return out
  }

  /// Encrypts `plaintext` with XChaCha20-Poly1305; `associatedData` is authenticated, not sent.
  public static func seal(_ plaintext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8])
    -> [UInt8]
  {
    ready()
    precondition(key.count == keyBytes && nonce.count == Int(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES))
    var out = [UInt8](repeating: 0, count: plaintext.count + aeadOverhead)
    var written: UInt64 = 0
    let status = out.withUnsafeMutableBufferPointer { o in
      plaintext.withUnsafeBufferPointer { p in
        associatedData.withUnsafeBufferPointer { a in
          nonce.withUnsafeBufferPointer { n in
            key.withUnsafeBufferPointer { k in
              crypto_aead_xchacha20poly1305_ietf_encrypt(
                o.baseAddress!, &written, p.baseAddress, UInt64(plaintext.count), a.baseAddress,
                UInt64(associatedData.count), nil, n.baseAddress!, k.baseAddress!)
            }
          }
        }
      }
    }
    precondition(status == 0, "crypto_aead_xchacha20poly1305_ietf_encrypt failed")
    return out
  }

  /// Decrypts and authenticates; nil when the ciphertext, the key or the associated data differ
  /// from what was sealed (a tampered, misdirected or replayed share).
  public static func open(_ ciphertext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8])
    -> [UInt8]?
  {
    ready()
    guard ciphertext.count >= aeadOverhead, key.count == keyBytes,
      nonce.count == Int(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)
    else { return nil }
    var out = [UInt8](repeating: 0, count: ciphertext.count - aeadOverhead)
    var written: UInt64 = 0
    let status = out.withUnsafeMutableBufferPointer { o in
      ciphertext.withUnsafeBufferPointer { c in
        associatedData.withUnsafeBufferPointer { a in
          nonce.withUnsafeBufferPointer { n in
            key.withUnsafeBufferPointer { k in
              crypto_aead_xchacha20poly1305_ietf_decrypt(
                o.baseAddress, &written, nil, c.baseAddress!, UInt64(ciphertext.count), a.baseAddress,
                UInt64(associatedData.count), n.baseAddress!, k.baseAddress!)
            }
          }
        }
      }
    }
    guard status == 0 else {
      zero(&out)
      return nil
    }
    return out
  }

  /// An Ed25519 key pair from a 32-byte seed (`crypto_sign_seed_keypair`).
  public static func signingPair(seed: [UInt8]) -> (publicKey: [UInt8], secretKey: [UInt8]) {
    ready()
    precondition(seed.count == keyBytes)
    var pk = [UInt8](repeating: 0, count: Int(crypto_sign_PUBLICKEYBYTES))
    var sk = [UInt8](repeating: 0, count: Int(crypto_sign_SECRETKEYBYTES))
    _ = pk.withUnsafeMutableBufferPointer { p in
      sk.withUnsafeMutableBufferPointer { s in
        seed.withUnsafeBufferPointer {
          crypto_sign_seed_keypair(p.baseAddress!, s.baseAddress!, $0.baseAddress!)
        }
      }
    }
    return (pk, sk)
  }

  /// A detached Ed25519 signature of `message`.
  public static func sign(_ message: [UInt8], secretKey: [UInt8]) -> [UInt8] {
    ready()
    var sig = [UInt8](repeating: 0, count: signatureBytes)
    _ = sig.withUnsafeMutableBufferPointer { s in
      message.withUnsafeBufferPointer { m in
        secretKey.withUnsafeBufferPointer {
          crypto_sign_detached(s.baseAddress!, nil, m.baseAddress, UInt64(message.count), $0.baseAddress!)
        }
      }
    }
    return sig
  }

  /// Whether `signature` is `publicKey`'s Ed25519 signature of `message`.
  public static func verify(_ signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
    ready()
    guard signature.count == signatureBytes, publicKey.count == Int(crypto_sign_PUBLICKEYBYTES) else {
      return false
    }
    return signature.withUnsafeBufferPointer { s in
      message.withUnsafeBufferPointer { m in
        publicKey.withUnsafeBufferPointer {
          crypto_sign_verify_detached(s.baseAddress!, m.baseAddress, UInt64(message.count), $0.baseAddress!)
            == 0
        }
      }
    }
  }
}

/// A deterministic stream of secret bytes from a 32-byte key (ChaCha20), consumed in order:
/// the source of Shamir polynomial coefficients. Deterministic so a simulation replays from its
/// seed; secret because its key is.
public struct SecretStream: Sendable {
  private var key: [UInt8]
  private var buffer: [UInt8] = []
  private var position = 0
  private var blocks: UInt64 = 0

  public init(key: [UInt8]) {
    precondition(key.count == SecAggCrypto.keyBytes, "a SecretStream key has 32 bytes")
    self.key = key
  }

  /// The next 64 bits of the stream.
  public mutating func next() -> UInt64 {
    if position + 8 > buffer.count { refill() }
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(buffer[position + i]) << (8 * UInt64(i)) }
    position += 8
    return v
  }

  private mutating func refill() {
    SecAggCrypto.zero(&buffer)
    // A fresh subkey per 4 KiB keeps every block of the stream distinct without nonce tracking.
    var sub = SecAggCrypto.subkey(of: key, id: blocks, context: "cohortSS")
    buffer = SecAggCrypto.stream(key: sub, count: 4096)
    SecAggCrypto.zero(&sub)
    blocks += 1
    position = 0
  }

  /// Zeroes the key and any buffered bytes; the stream must not be used afterwards.
  public mutating func erase() {
    SecAggCrypto.zero(&key)
    SecAggCrypto.zero(&buffer)
  }
}
