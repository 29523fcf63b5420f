/// A device's 1-based position among the devices that entered a secure-aggregation round; it is
/// also the x-coordinate of the Shamir shares it holds.
public typealias SecAggIndex = UInt32

/// Step 0, device → server: the device's two public keys for this round (and, in the active
/// variant, its Ed25519 signature over them).
public struct AdvertiseKeys: Sendable, Hashable {
  public var round: UInt64
  public var sender: SecAggIndex
  /// X25519 key for encrypting shares between devices.
  public var encryptionKey: [UInt8]
  /// X25519 key whose agreements seed the pairwise masks.
  public var maskingKey: [UInt8]
  /// Empty in the semi-honest variant.
  public var signature: [UInt8]

  public init(
    round: UInt64, sender: SecAggIndex, encryptionKey: [UInt8], maskingKey: [UInt8], signature: [UInt8]
  ) {
    self.round = round
    self.sender = sender
    self.encryptionKey = encryptionKey
    self.maskingKey = maskingKey
    self.signature = signature
  }
}

/// Step 0 → 1, server → device: the advertised keys of the device's neighbours.
public struct NeighbourKeys: Sendable, Hashable {
  public var round: UInt64
  public var keys: [AdvertiseKeys]

  public init(round: UInt64, keys: [AdvertiseKeys]) {
    self.round = round
    self.keys = keys
  }
}

/// An encrypted pair of shares (of the sender's masking key and self-mask seed) for one peer.
public struct EncryptedShare: Sendable, Hashable {
  /// The other end: the recipient when a device sends, the sender when the server forwards.
  public var peer: SecAggIndex
  public var ciphertext: [UInt8]

  public init(peer: SecAggIndex, ciphertext: [UInt8]) {
    self.peer = peer
    self.ciphertext = ciphertext
  }
}

/// Step 1, device → server: one ciphertext per neighbour; only that neighbour can open it.
public struct ShareKeys: Sendable, Hashable {
  public var round: UInt64
  public var sender: SecAggIndex
  public var shares: [EncryptedShare]

  public init(round: UInt64, sender: SecAggIndex, shares: [EncryptedShare]) {
    self.round = round
    self.sender = sender
    self.shares = shares
  }
}

/// Step 1 → 2, server → device: the ciphertexts addressed to the device by neighbours that
/// completed step 1; their senders are the peers the device masks against.
public struct SharesForDevice: Sendable, Hashable {
  public var round: UInt64
  public var shares: [EncryptedShare]

  public init(round: UInt64, shares: [EncryptedShare]) {
    self.round = round
    self.shares = shares
  }
}

/// Step 2, device → server: the input plus its self mask and pairwise masks, in Z/2^b. On the
/// wire each element takes exactly b bits.
public struct MaskedInput: Sendable, Hashable {
  public var round: UInt64
  public var sender: SecAggIndex
  public var vector: [UInt32]
  /// b: the ring's width, 1...32.
  public var ringBits: Int

  public init(round: UInt64, sender: SecAggIndex, vector: [UInt32], ringBits: Int = 32) {
    self.round = round
    self.sender = sender
    self.vector = vector
    self.ringBits = ringBits
  }
}

/// Steps 2 → 3 (active) and 3 → 4, server → device: who delivered a masked input, and in the
/// unmasking request of the active variant the signatures that prove everyone saw that list.
public struct SurvivorList: Sendable, Hashable {
  public var round: UInt64
  /// Sorted ascending.
  public var survivors: [SecAggIndex]
  /// Active variant, unmasking only: neighbours' signatures over `survivors`.
  public var signatures: [SignedSurvivors]

  public init(round: UInt64, survivors: [SecAggIndex], signatures: [SignedSurvivors] = []) {
    self.round = round
    self.survivors = survivors
    self.signatures = signatures
  }
}

/// Step 3 (active variant), device → server: the device's signature over the survivor list.
public struct SignedSurvivors: Sendable, Hashable {
  public var round: UInt64
  public var sender: SecAggIndex
  public var signature: [UInt8]

  public init(round: UInt64, sender: SecAggIndex, signature: [UInt8]) {
    self.round = round
    self.sender = sender
    self.signature = signature
  }
}

/// One revealed share: of `owner`'s self-mask seed (a survivor) or of its masking key (a device
/// that dropped after step 1).
public struct RevealedShare: Sendable, Hashable {
  public var owner: SecAggIndex
  public var share: ShamirShare

  public init(owner: SecAggIndex, share: ShamirShare) {
    self.owner = owner
    self.share = share
  }
}

/// Step 4, device → server: self-mask shares of survivors and masking-key shares of dropped
/// neighbours, never both for the same peer.
public struct UnmaskResponse: Sendable, Hashable {
  public var round: UInt64
  public var sender: SecAggIndex
  public var selfMaskShares: [RevealedShare]
  public var maskingKeyShares: [RevealedShare]

  public init(
    round: UInt64, sender: SecAggIndex, selfMaskShares: [RevealedShare], maskingKeyShares: [RevealedShare]
  ) {
    self.round = round
    self.sender = sender
    self.selfMaskShares = selfMaskShares
    self.maskingKeyShares = maskingKeyShares
  }
}

/// Every message of the protocol, in both directions.
public enum SecAggMessage: Sendable, Hashable {
  case advertiseKeys(AdvertiseKeys)
  case neighbourKeys(NeighbourKeys)
  case shareKeys(ShareKeys)
  case sharesForDevice(SharesForDevice)
  case maskedInput(MaskedInput)
  case consistencyRequest(SurvivorList)
  case signedSurvivors(SignedSurvivors)
  case unmaskRequest(SurvivorList)
  case unmaskResponse(UnmaskResponse)

  public var round: UInt64 {
    switch self {
    case .advertiseKeys(let m): m.round
    case .neighbourKeys(let m): m.round
    case .shareKeys(let m): m.round
    case .sharesForDevice(let m): m.round
    case .maskedInput(let m): m.round
    case .consistencyRequest(let m), .unmaskRequest(let m): m.round
    case .signedSurvivors(let m): m.round
    case .unmaskResponse(let m): m.round
    }
  }

  /// The sender a device message claims; nil for server messages.
  public var sender: SecAggIndex? {
    switch self {
    case .advertiseKeys(let m): m.sender
    case .shareKeys(let m): m.sender
    case .maskedInput(let m): m.sender
    case .signedSurvivors(let m): m.sender
    case .unmaskResponse(let m): m.sender
    case .neighbourKeys, .sharesForDevice, .consistencyRequest, .unmaskRequest: nil
    }
  }
}

// MARK: - Wire form

/// Why a message could not be decoded.
public enum SecAggDecodingError: Error, Sendable, Equatable {
  /// The bytes end before the message does.
  case truncated
  /// Unknown tag, impossible length, trailing bytes or an invalid field.
  case malformed(String)
}

extension SecAggMessage {
  private enum Tag: UInt8 {
    case advertiseKeys = 1
    case neighbourKeys, shareKeys, sharesForDevice, maskedInput, consistencyRequest,
      signedSurvivors, unmaskRequest, unmaskResponse
  }

  /// The message as bytes: a tag, then fields in order, integers little-endian, arrays with a
  /// 32-bit count. Masked vectors are sent as 32-bit words.
  public var encoded: [UInt8] {
    var w = ByteWriter()
    w.reserve(byteCount)
    switch self {
    case .advertiseKeys(let m):
      w.u8(Tag.advertiseKeys.rawValue)
      w.advertise(m)
    case .neighbourKeys(let m):
      w.u8(Tag.neighbourKeys.rawValue)
      w.u64(m.round)
      w.u32(UInt32(m.keys.count))
      for k in m.keys { w.advertise(k) }
    case .shareKeys(let m):
      w.u8(Tag.shareKeys.rawValue)
      w.u64(m.round)
      w.u32(m.sender)
      w.shares(m.shares)
    case .sharesForDevice(let m):
      w.u8(Tag.sharesForDevice.rawValue)
      w.u64(m.round)
      w.shares(m.shares)
    case .maskedInput(let m):
      w.u8(Tag.maskedInput.rawValue)
      w.u64(m.round)
      w.u32(m.sender)
      w.u32(UInt32(m.vector.count))
      w.u8(UInt8(m.ringBits))
      w.packed(m.vector, bits: m.ringBits)
    case .consistencyRequest(let m):
      w.u8(Tag.consistencyRequest.rawValue)
      w.survivors(m)
    case .signedSurvivors(let m):
      w.u8(Tag.signedSurvivors.rawValue)
      w.signed(m)
    case .unmaskRequest(let m):
      w.u8(Tag.unmaskRequest.rawValue)
      w.survivors(m)
    case .unmaskResponse(let m):
      w.u8(Tag.unmaskResponse.rawValue)
      w.u64(m.round)
      w.u32(m.sender)
      w.revealed(m.selfMaskShares)
      w.revealed(m.maskingKeyShares)
    }
    return w.bytes
  }

  /// The size of `encoded`, computed without encoding: what a device or the server sends.
  public var byteCount: Int {
    func keys(_ k: AdvertiseKeys) -> Int {
      8 + 4 + 3 * 4 + k.encryptionKey.count + k.maskingKey.count + k.signature.count
    }
    func shares(_ s: [EncryptedShare]) -> Int { 4 + s.reduce(0) { $0 + 8 + $1.ciphertext.count } }
    func revealed(_ r: [RevealedShare]) -> Int {
      4 + r.reduce(0) { $0 + 4 + 4 + 4 + 8 * $1.share.values.count }
    }
    func survivors(_ s: SurvivorList) -> Int {
      8 + 4 + 4 * s.survivors.count + 4 + s.signatures.reduce(0) { $0 + 12 + 4 + $1.signature.count }
    }
    switch self {
    case .advertiseKeys(let m): return 1 + keys(m)
    case .neighbourKeys(let m): return 1 + 8 + 4 + m.keys.reduce(0) { $0 + keys($1) }
    case .shareKeys(let m): return 1 + 12 + shares(m.shares)
    case .sharesForDevice(let m): return 1 + 8 + shares(m.shares)
    case .maskedInput(let m): return 1 + 12 + 4 + 1 + (m.vector.count * m.ringBits + 7) / 8
    case .consistencyRequest(let m), .unmaskRequest(let m): return 1 + survivors(m)
    case .signedSurvivors(let m): return 1 + 12 + 4 + m.signature.count
    case .unmaskResponse(let m): return 1 + 12 + revealed(m.selfMaskShares) + revealed(m.maskingKeyShares)
    }
  }

  /// Decodes one message; every length is checked against the bytes left before anything is
  /// allocated, so a hostile length cannot exhaust memory.
  public init(decoding bytes: [UInt8]) throws(SecAggDecodingError) {
    var r = ByteReader(bytes)
    guard let tag = Tag(rawValue: try r.u8()) else { throw .malformed("unknown message tag") }
    switch tag {
    case .advertiseKeys: self = .advertiseKeys(try r.advertise())
    case .neighbourKeys:
      let round = try r.u64()
      let n = try r.count(minimumBytesEach: 24)
      var keys: [AdvertiseKeys] = []
      for _ in 0..<n { keys.append(try r.advertise()) }
      self = .neighbourKeys(NeighbourKeys(round: round, keys: keys))
    case .shareKeys:
      let round = try r.u64()
      let sender = try r.u32()
      self = .shareKeys(ShareKeys(round: round, sender: sender, shares: try r.shares()))
    case .sharesForDevice:
      let round = try r.u64()
      self = .sharesForDevice(SharesForDevice(round: round, shares: try r.shares()))
    case .maskedInput:
      let round = try r.u64()
      let sender = try r.u32()
      let n = Int(try r.u32())
      let bits = Int(try r.u8())
      guard (1...32).contains(bits) else { throw .malformed("a masked input of \(bits)-bit elements") }
      let vector = try r.packed(count: n, bits: bits)
      self = .maskedInput(MaskedInput(round: round, sender: sender, vector: vector, ringBits: bits))
    case .consistencyRequest: self = .consistencyRequest(try r.survivors())
    case .signedSurvivors: self = .signedSurvivors(try r.signed())
    case .unmaskRequest: self = .unmaskRequest(try r.survivors())
    case .unmaskResponse:
      let round = try r.u64()
      let sender = try r.u32()
      let selfMask = try r.revealed()
      let maskingKey = try r.revealed()
      self = .unmaskResponse(
        UnmaskResponse(round: round, sender: sender, selfMaskShares: selfMask, maskingKeyShares: maskingKey))
    }
    guard r.isAtEnd else { throw .malformed("trailing bytes after the message") }
  }
}

private struct ByteWriter {
  var bytes: [UInt8] = []
  mutating func reserve(_ n: Int) { bytes.reserveCapacity(n) }
  mutating func u8(_ v: UInt8) { bytes.append(v) }
  mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
  mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
  mutating func blob(_ b: [UInt8]) {
    u32(UInt32(b.count))
    bytes.append(contentsOf: b)
  }
  mutating func advertise(_ m: AdvertiseKeys) {
    u64(m.round)
    u32(m.sender)
    blob(m.encryptionKey)
    blob(m.maskingKey)
    blob(m.signature)
  }
  mutating func shares(_ s: [EncryptedShare]) {
    u32(UInt32(s.count))
    for e in s {
      u32(e.peer)
      blob(e.ciphertext)
    }
  }
  mutating func signed(_ m: SignedSurvivors) {
    u64(m.round)
    u32(m.sender)
    blob(m.signature)
  }
  mutating func survivors(_ m: SurvivorList) {
    u64(m.round)
    u32(UInt32(m.survivors.count))
    for s in m.survivors { u32(s) }
    u32(UInt32(m.signatures.count))
    for s in m.signatures { signed(s) }
  }
  /// `bits` low bits of each value, least significant first, bytes filled from their low end.
  mutating func packed(_ values: [UInt32], bits: Int) {
    var buffer: UInt64 = 0
    var filled = 0
    let mask: UInt64 = bits == 32 ? 0xFFFF_FFFF : (1 << UInt64(bits)) - 1
    bytes.reserveCapacity(bytes.count + (values.count * bits + 7) / 8)
    for v in values {
      buffer |= (UInt64(v) & mask) << UInt64(filled)
      filled += bits
      while filled >= 8 {
        bytes.append(UInt8(truncatingIfNeeded: buffer))
        buffer >>= 8
        filled -= 8
      }
    }
    if filled > 0 { bytes.append(UInt8(truncatingIfNeeded: buffer)) }
  }

  mutating func revealed(_ r: [RevealedShare]) {
    u32(UInt32(r.count))
    for s in r {
      u32(s.owner)
      u32(UInt32(s.share.values.count))
      u32(s.share.index)
      for v in s.share.values { u64(v) }
    }
  }
}

private struct ByteReader {
  let bytes: [UInt8]
  var position = 0
  init(_ bytes: [UInt8]) { self.bytes = bytes }
  var isAtEnd: Bool { position == bytes.count }
  var remaining: Int { bytes.count - position }

  mutating func u8() throws(SecAggDecodingError) -> UInt8 {
    guard remaining >= 1 else { throw .truncated }
    position += 1
    return bytes[position - 1]
  }
  mutating func u32() throws(SecAggDecodingError) -> UInt32 {
    guard remaining >= 4 else { throw .truncated }
    var v: UInt32 = 0
    for i in 0..<4 { v |= UInt32(bytes[position + i]) << (8 * UInt32(i)) }
    position += 4
    return v
  }
  mutating func u64() throws(SecAggDecodingError) -> UInt64 {
    guard remaining >= 8 else { throw .truncated }
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * UInt64(i)) }
    position += 8
    return v
  }
  /// A count of items each at least `minimumBytesEach` long; more than the bytes left can hold
  /// means the length is a lie (or the message was cut short).
  mutating func count(minimumBytesEach: Int) throws(SecAggDecodingError) -> Int {
    let n = Int(try u32())
    guard n * minimumBytesEach <= remaining else { throw .truncated }
    return n
  }
  mutating func blob() throws(SecAggDecodingError) -> [UInt8] {
    let n = try count(minimumBytesEach: 1)
    position += n
    return Array(bytes[(position - n)..<position])
  }
  mutating func advertise() throws(SecAggDecodingError) -> AdvertiseKeys {
    let round = try u64()
    let sender = try u32()
    return AdvertiseKeys(
      round: round, sender: sender, encryptionKey: try blob(), maskingKey: try blob(), signature: try blob())
  }
  mutating func shares() throws(SecAggDecodingError) -> [EncryptedShare] {
    let n = try count(minimumBytesEach: 8)
    var out: [EncryptedShare] = []
    out.reserveCapacity(n)
    for _ in 0..<n {
      let peer = try u32()
      out.append(EncryptedShare(peer: peer, ciphertext: try blob()))
    }
    return out
  }
  mutating func signed() throws(SecAggDecodingError) -> SignedSurvivors {
    let round = try u64()
    let sender = try u32()
    return SignedSurvivors(round: round, sender: sender, signature: try blob())
  }
  mutating func survivors() throws(SecAggDecodingError) -> SurvivorList {
    let round = try u64()
    let n = try count(minimumBytesEach: 4)
    var survivors: [SecAggIndex] = []
    survivors.reserveCapacity(n)
    for _ in 0..<n { survivors.append(try u32()) }
    let s = try count(minimumBytesEach: 16)
    var signatures: [SignedSurvivors] = []
    for _ in 0..<s { signatures.append(try signed()) }
    return SurvivorList(round: round, survivors: survivors, signatures: signatures)
  }
  /// The inverse of `ByteWriter.packed`; the byte count is checked before anything is read.
  mutating func packed(count n: Int, bits: Int) throws(SecAggDecodingError) -> [UInt32] {
    let byteCount = (n * bits + 7) / 8
    guard byteCount <= remaining else { throw .truncated }
    var out = [UInt32](repeating: 0, count: n)
    var buffer: UInt64 = 0
    var filled = 0
    var p = position
    let mask: UInt64 = bits == 32 ? 0xFFFF_FFFF : (1 << UInt64(bits)) - 1
    for i in 0..<n {
      while filled < bits {
        buffer |= UInt64(bytes[p]) << UInt64(filled)
        p += 1
        filled += 8
      }
      out[i] = UInt32(buffer & mask)
      buffer >>= UInt64(bits)
      filled -= bits
    }
    // Padding bits of the last byte must be zero: any other value is not a message we wrote.
    guard buffer == 0 else { throw .malformed("non-zero padding after a masked input") }
    position += byteCount
    return out
  }

  mutating func revealed() throws(SecAggDecodingError) -> [RevealedShare] {
    let n = try count(minimumBytesEach: 12)
    var out: [RevealedShare] = []
    out.reserveCapacity(n)
    for _ in 0..<n {
      let owner = try u32()
      let chunks = try count(minimumBytesEach: 8)
      guard chunks > 0, chunks <= 64 else { throw .malformed("a share has \(chunks) chunks") }
      let index = try u32()
      var values: [UInt64] = []
      for _ in 0..<chunks {
        let v = try u64()
        guard v < Shamir.prime else { throw .malformed("a share value is outside the field") }
        values.append(v)
      }
      guard index > 0 else { throw .malformed("a share has index 0") }
      out.append(RevealedShare(owner: owner, share: ShamirShare(index: index, values: values)))
    }
    return out
  }
}
