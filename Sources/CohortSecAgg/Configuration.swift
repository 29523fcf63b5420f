/// Which adversary the protocol defends against.
public enum SecAggVariant: String, Sendable, Hashable, CaseIterable {
  /// An honest-but-curious server: advertise keys, share keys, masked input, unmasking.
  case semiHonest = "semi_honest"
  /// Bonawitz et al.'s active-adversary variant: keys are signed with long-term Ed25519 identity
  /// keys, and a consistency check before unmasking makes every device confirm the same survivor
  /// list, so a lying server cannot learn both shares of one device.
  case active
}

/// The public parameters of one secure-aggregation round, known to the server and every device.
public struct SecAggConfiguration: Sendable, Hashable {
  public var round: UInt64
  /// Devices that enter the protocol, indexed 1...count.
  public var count: Int
  /// Neighbours per device (count − 1 for the complete graph of Bonawitz et al.).
  public var degree: Int
  /// Shares needed to reconstruct a secret.
  public var threshold: Int
  /// Public seed of the neighbour graph's ring order.
  public var graphSeed: [UInt8]
  /// Words per input vector.
  public var vectorLength: Int
  /// Inputs and sums live in Z/2^ringBits, 1...32.
  public var ringBits: Int
  public var variant: SecAggVariant
  /// Active variant: each device's long-term Ed25519 public key, from the PKI that admitted it.
  public var identityKeys: [SecAggIndex: [UInt8]]

  public init(
    round: UInt64, count: Int, degree: Int, threshold: Int, graphSeed: [UInt8], vectorLength: Int,
    ringBits: Int,
    variant: SecAggVariant = .semiHonest, identityKeys: [SecAggIndex: [UInt8]] = [:]
  ) {
    self.round = round
    self.count = count
    self.degree = min(degree, count - 1)
    self.threshold = threshold
    self.graphSeed = graphSeed
    self.vectorLength = vectorLength
    self.ringBits = ringBits
    self.variant = variant
    self.identityKeys = identityKeys
  }

  /// Problems that make the configuration unusable, each saying what to change.
  public var problems: [String] {
    var out: [String] = []
    if count < 2 { out.append("secure aggregation needs at least 2 devices, got \(count)") }
    if !(1...32).contains(ringBits) { out.append("ring bits must be 1...32, got \(ringBits)") }
    if vectorLength < 1 { out.append("the input vector is empty") }
    if graphSeed.count != SecAggCrypto.keyBytes { out.append("the graph seed must have 32 bytes") }
    if degree < count - 1, degree % 2 != 0 { out.append("degree \(degree) must be even (or count − 1)") }
    if threshold < 1 || threshold > max(degree, 1) {
      out.append("threshold \(threshold) must be between 1 and the degree \(degree)")
    }
    if variant == .active, identityKeys.count < count {
      out.append(
        "the active variant needs an identity key for every device (\(identityKeys.count) of \(count))")
    }
    return out
  }

  /// Reduces a word to the ring.
  var ringMask: UInt32 { ringBits >= 32 ? UInt32.max : (UInt32(1) << UInt32(ringBits)) - 1 }

  /// Bytes of a Shamir share of a 32-byte secret.
  static let secretLength = SecAggCrypto.keyBytes
  static var chunks: Int { Shamir.chunkCount(secretLength: secretLength) }
  /// Plaintext of an encrypted share pair: sender, recipient, two shares.
  static var sharePlaintextBytes: Int { 8 + 2 * (4 + 8 * chunks) }
  static var shareCiphertextBytes: Int { sharePlaintextBytes + SecAggCrypto.aeadOverhead }

  func advertisedMessage(sender: SecAggIndex, encryptionKey: [UInt8], maskingKey: [UInt8]) -> [UInt8] {
    var m = Array("cohort-secagg-keys".utf8)
    withUnsafeBytes(of: round.littleEndian) { m.append(contentsOf: $0) }
    withUnsafeBytes(of: sender.littleEndian) { m.append(contentsOf: $0) }
    return m + encryptionKey + maskingKey
  }

  func survivorsMessage(_ survivors: [SecAggIndex]) -> [UInt8] {
    var m = Array("cohort-secagg-survivors".utf8)
    withUnsafeBytes(of: round.littleEndian) { m.append(contentsOf: $0) }
    for s in survivors { withUnsafeBytes(of: s.littleEndian) { m.append(contentsOf: $0) } }
    return m
  }

  /// Associated data and nonce for the share pair `sender` encrypts to `recipient`: binding both
  /// ends and the round means a share replayed from another round or redirected fails to open.
  func shareBinding(sender: SecAggIndex, recipient: SecAggIndex) -> (nonce: [UInt8], associatedData: [UInt8])
  {
    var ad: [UInt8] = []
    withUnsafeBytes(of: round.littleEndian) { ad.append(contentsOf: $0) }
    withUnsafeBytes(of: sender.littleEndian) { ad.append(contentsOf: $0) }
    withUnsafeBytes(of: recipient.littleEndian) { ad.append(contentsOf: $0) }
    // The key is shared by the two directions of one pair; the ordered pair in the nonce keeps
    // each (key, nonce) used once.
    let nonce = Array(ad[8..<16]) + [UInt8](repeating: 0, count: 16)
    return (nonce, ad)
  }
}

/// A protocol failure on a device or on the server, with what it means for the round.
public struct SecAggError: Error, Sendable, Equatable, CustomStringConvertible {
  public enum Code: String, Sendable {
    case badConfiguration = "secagg.configuration"
    case outOfOrder = "secagg.out_of_order"
    case wrongRound = "secagg.wrong_round"
    case tooFewNeighbours = "secagg.too_few_neighbours"
    case invalidMessage = "secagg.invalid_message"
    case badSignature = "secagg.bad_signature"
    case inconsistentSurvivors = "secagg.inconsistent_survivors"
  }

  public var code: Code
  public var message: String
  public var description: String { "\(code.rawValue): \(message)" }

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }
}

/// Mask key for the pair (own, peer) from the agreed key: a `crypto_kdf` subkey per round, so a
/// key pair reused by mistake still never repeats a mask.
func pairwiseMaskKey(agreed: [UInt8], round: UInt64) -> [UInt8] {
  SecAggCrypto.subkey(of: agreed, id: round, context: "cohortPM")
}

/// Sign of the pairwise mask `own` adds for `peer`: opposite for the two ends, so they cancel.
func pairwiseSign(own: SecAggIndex, peer: SecAggIndex) -> Int32 { own < peer ? 1 : -1 }
