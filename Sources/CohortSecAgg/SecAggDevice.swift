/// One device's side of a secure-aggregation round: a state machine fed the server's messages
/// in order, answering each with the device's next message. No I/O and no clock; its only
/// randomness is the 32-byte root seed it is given (fresh from the OS on a real device, derived
/// from the scenario seed in a simulation).
///
/// Secrets (the two X25519 secret keys, the self-mask seed, Shamir coefficients) are zeroed as
/// soon as the step that needs them is over.
public struct SecAggDevice: Sendable {
  public enum Step: Sendable, Equatable {
    case advertiseKeys, shareKeys, maskedInput, consistencyCheck, unmasking, finished
    case aborted(SecAggError)
  }

  public let configuration: SecAggConfiguration
  public let index: SecAggIndex
  public private(set) var step: Step = .advertiseKeys
  /// Ciphertexts from peers that failed to open (tampered, misdirected or replayed): those peers'
  /// shares are withheld, and the round goes on if enough other shares reach the server.
  public private(set) var rejectedShares = 0
  /// Bytes of every message this device sent.
  public private(set) var bytesSent = 0

  private let graph: NeighbourGraph
  private var encryption: (publicKey: [UInt8], secretKey: [UInt8])
  private var masking: (publicKey: [UInt8], secretKey: [UInt8])
  private var selfMaskSeed: [UInt8]
  private var coefficientKey: [UInt8]
  private var identitySecretKey: [UInt8]
  /// Neighbours' advertised keys, by index (step 1 on).
  private var neighbourKeys: [SecAggIndex: AdvertiseKeys] = [:]
  /// Ciphertexts received in step 2, by sender: the neighbours that shared keys.
  private var receivedShares: [SecAggIndex: [UInt8]] = [:]
  private var signedSurvivors: [SecAggIndex]? = nil
  /// Share-encryption keys agreed with each neighbour in step 1, kept for opening its shares in
  /// step 4 (an X25519 agreement costs more than the rest of a share's handling).
  private var shareKeys: [SecAggIndex: [UInt8]] = [:]

  /// - Parameters:
  ///   - seed: 32 secret bytes; every secret of this participation derives from it.
  ///   - identitySecretKey: the device's long-term Ed25519 secret key (active variant only).
  public init(
    configuration: SecAggConfiguration, index: SecAggIndex, seed: [UInt8], identitySecretKey: [UInt8] = []
  ) {
    precondition(seed.count == SecAggCrypto.keyBytes, "a device's secure-aggregation seed has 32 bytes")
    self.configuration = configuration
    self.index = index
    graph = NeighbourGraph(
      count: configuration.count, degree: configuration.degree, seed: configuration.graphSeed)
    var encryptionSeed = SecAggCrypto.subkey(of: seed, id: 1, context: "cohortDV")
    var maskingSeed = SecAggCrypto.subkey(of: seed, id: 2, context: "cohortDV")
    encryption = SecAggCrypto.keyAgreementPair(seed: encryptionSeed)
    masking = SecAggCrypto.keyAgreementPair(seed: maskingSeed)
    SecAggCrypto.zero(&encryptionSeed)
    SecAggCrypto.zero(&maskingSeed)
    selfMaskSeed = SecAggCrypto.subkey(of: seed, id: 3, context: "cohortDV")
    coefficientKey = SecAggCrypto.subkey(of: seed, id: 4, context: "cohortDV")
    self.identitySecretKey = identitySecretKey
    if !configuration.problems.isEmpty {
      step = .aborted(SecAggError(.badConfiguration, configuration.problems.joined(separator: "; ")))
    } else if index < 1 || Int(index) > configuration.count {
      step = .aborted(SecAggError(.badConfiguration, "index \(index) is outside 1...\(configuration.count)"))
    }
  }

  /// Handles one server message and returns the reply (nil for the first step, which the device
  /// starts itself with `advertiseKeys()`). On a protocol violation the device aborts: it wipes
  /// its secrets and answers nothing more, which the server sees as a dropout.
  public mutating func handle(_ message: SecAggMessage, input: [UInt32] = []) throws(SecAggError)
    -> SecAggMessage
  {
    do throws(SecAggError) {
      guard message.round == configuration.round else {
        throw SecAggError(.wrongRound, "message for round \(message.round) in round \(configuration.round)")
      }
      let reply: SecAggMessage
      switch (step, message) {
      case (.shareKeys, .neighbourKeys(let m)): reply = .shareKeys(try shareKeys(m))
      case (.maskedInput, .sharesForDevice(let m)): reply = .maskedInput(try maskInput(m, input: input))
      case (.consistencyCheck, .consistencyRequest(let m)): reply = .signedSurvivors(try signSurvivors(m))
      case (.consistencyCheck, .unmaskRequest(let m)) where configuration.variant == .semiHonest,
        (.unmasking, .unmaskRequest(let m)):
        reply = .unmaskResponse(try unmask(m))
      default:
        throw SecAggError(.outOfOrder, "unexpected \(message.kindName) at step \(step)")
      }
      bytesSent += reply.byteCount
      return reply
    } catch {
      abort(error)
      throw error
    }
  }

  /// Step 0: the device's public keys, signed in the active variant.
  public mutating func advertiseKeys() throws(SecAggError) -> AdvertiseKeys {
    guard step == .advertiseKeys else { throw SecAggError(.outOfOrder, "keys were already advertised") }
    var signature: [UInt8] = []
    if configuration.variant == .active {
      guard identitySecretKey.count == 64 else {
        let error = SecAggError(
          .badConfiguration, "the active variant needs the device's Ed25519 identity key")
        abort(error)
        throw error
      }
      signature = SecAggCrypto.sign(
        configuration.advertisedMessage(
          sender: index, encryptionKey: encryption.publicKey, maskingKey: masking.publicKey),
        secretKey: identitySecretKey)
    }
    step = .shareKeys
    let m = AdvertiseKeys(
      round: configuration.round, sender: index, encryptionKey: encryption.publicKey,
      maskingKey: masking.publicKey, signature: signature)
    bytesSent += SecAggMessage.advertiseKeys(m).byteCount
    return m
  }

  /// Step 1: checks the neighbours' keys, then splits the masking key and self-mask seed into
  /// shares and encrypts each neighbour's pair to that neighbour.
  mutating func shareKeys(_ m: NeighbourKeys) throws(SecAggError) -> ShareKeys {
    var seenKeys = Set<[UInt8]>()
    for k in m.keys {
      guard k.round == configuration.round, k.sender != index, graph.areNeighbours(index, k.sender),
        neighbourKeys[k.sender] == nil, k.encryptionKey.count == 32, k.maskingKey.count == 32
      else {
        throw SecAggError(.invalidMessage, "the server sent keys that are not a neighbour's for this round")
      }
      // Equal keys for two devices would let one impersonate the other's masks.
      guard seenKeys.insert(k.encryptionKey).inserted, seenKeys.insert(k.maskingKey).inserted,
        k.maskingKey != masking.publicKey, k.encryptionKey != encryption.publicKey
      else { throw SecAggError(.invalidMessage, "two devices advertised the same key") }
      if configuration.variant == .active {
        guard let identity = configuration.identityKeys[k.sender],
          SecAggCrypto.verify(
            k.signature,
            of: configuration.advertisedMessage(
              sender: k.sender, encryptionKey: k.encryptionKey, maskingKey: k.maskingKey),
            publicKey: identity)
        else {
          throw SecAggError(.badSignature, "device \(k.sender)'s keys are not signed by its identity key")
        }
      }
      neighbourKeys[k.sender] = k
    }
    guard neighbourKeys.count >= configuration.threshold else {
      throw SecAggError(
        .tooFewNeighbours,
        "\(neighbourKeys.count) neighbours advertised keys; at least the threshold \(configuration.threshold) are needed"
      )
    }
    let peers = neighbourKeys.keys.sorted()
    var stream = SecretStream(key: coefficientKey)
    defer { stream.erase() }
    var maskingShares = Shamir.split(
      secret: masking.secretKey, threshold: configuration.threshold, indices: peers, randomness: &stream)
    var selfMaskShares = Shamir.split(
      secret: selfMaskSeed, threshold: configuration.threshold, indices: peers, randomness: &stream)
    var out: [EncryptedShare] = []
    out.reserveCapacity(peers.count)
    for (i, peer) in peers.enumerated() {
      guard var key = encryptionKey(for: peer) else {
        throw SecAggError(.invalidMessage, "device \(peer)'s encryption key is not a valid X25519 key")
      }
      var plaintext: [UInt8] = []
      withUnsafeBytes(of: index.littleEndian) { plaintext.append(contentsOf: $0) }
      withUnsafeBytes(of: peer.littleEndian) { plaintext.append(contentsOf: $0) }
      plaintext += maskingShares[i].bytes + selfMaskShares[i].bytes
      let binding = configuration.shareBinding(sender: index, recipient: peer)
      out.append(
        EncryptedShare(
          peer: peer,
          ciphertext: SecAggCrypto.seal(
            plaintext, key: key, nonce: binding.nonce, associatedData: binding.associatedData)))
      SecAggCrypto.zero(&plaintext)
      SecAggCrypto.zero(&key)
      SecAggCrypto.zero(&maskingShares[i].values)
      SecAggCrypto.zero(&selfMaskShares[i].values)
    }
    step = .maskedInput
    return ShareKeys(round: configuration.round, sender: index, shares: out)
  }

  /// Step 2: adds the self mask and one pairwise mask per neighbour that shared keys to the
  /// input. After this the device needs neither masking secret again, so both are wiped.
  mutating func maskInput(_ m: SharesForDevice, input: [UInt32]) throws(SecAggError) -> MaskedInput {
    guard input.count == configuration.vectorLength else {
      throw SecAggError(
        .badConfiguration,
        "the input has \(input.count) words; the round expects \(configuration.vectorLength)")
    }
    for s in m.shares {
      guard neighbourKeys[s.peer] != nil, receivedShares[s.peer] == nil,
        s.ciphertext.count == SecAggConfiguration.shareCiphertextBytes
      else {
        throw SecAggError(
          .invalidMessage, "the server forwarded a share from device \(s.peer) that cannot be")
      }
      receivedShares[s.peer] = s.ciphertext
    }
    guard receivedShares.count >= configuration.threshold else {
      throw SecAggError(
        .tooFewNeighbours,
        "\(receivedShares.count) neighbours shared keys; at least the threshold \(configuration.threshold) are needed"
      )
    }
    let mask = configuration.ringMask
    var vector = input
    for i in vector.indices { vector[i] &= mask }
    var selfKey = SecAggCrypto.subkey(of: selfMaskSeed, id: configuration.round, context: "cohortSM")
    SecAggCrypto.addMask(key: selfKey, sign: 1, into: &vector)
    SecAggCrypto.zero(&selfKey)
    for peer in receivedShares.keys.sorted() {
      guard
        var agreed = SecAggCrypto.agree(
          secretKey: masking.secretKey, ownPublicKey: masking.publicKey,
          peerPublicKey: neighbourKeys[peer]!.maskingKey, ownIndex: index, peerIndex: peer)
      else { throw SecAggError(.invalidMessage, "device \(peer)'s masking key is not a valid X25519 key") }
      var key = pairwiseMaskKey(agreed: agreed, round: configuration.round)
      SecAggCrypto.addMask(key: key, sign: pairwiseSign(own: index, peer: peer), into: &vector)
      SecAggCrypto.zero(&agreed)
      SecAggCrypto.zero(&key)
    }
    for i in vector.indices { vector[i] &= mask }
    SecAggCrypto.zero(&masking.secretKey)
    SecAggCrypto.zero(&selfMaskSeed)
    SecAggCrypto.zero(&coefficientKey)
    step = .consistencyCheck
    return MaskedInput(
      round: configuration.round, sender: index, vector: vector, ringBits: configuration.ringBits)
  }

  /// Step 3 (active variant): signs the survivor list after checking it is one the protocol
  /// allows.
  mutating func signSurvivors(_ m: SurvivorList) throws(SecAggError) -> SignedSurvivors {
    guard configuration.variant == .active else {
      throw SecAggError(.outOfOrder, "the semi-honest variant has no consistency check")
    }
    try checkSurvivors(m.survivors)
    guard identitySecretKey.count == 64 else {
      throw SecAggError(.badConfiguration, "the active variant needs the device's Ed25519 identity key")
    }
    signedSurvivors = m.survivors
    step = .unmasking
    return SignedSurvivors(
      round: configuration.round, sender: index,
      signature: SecAggCrypto.sign(configuration.survivorsMessage(m.survivors), secretKey: identitySecretKey))
  }

  /// Step 4: reveals, for each neighbour that shared keys, exactly one share: of its self-mask
  /// seed if it delivered a masked input, of its masking key if it did not.
  mutating func unmask(_ m: SurvivorList) throws(SecAggError) -> UnmaskResponse {
    try checkSurvivors(m.survivors)
    if configuration.variant == .active {
      guard m.survivors == signedSurvivors else {
        throw SecAggError(.inconsistentSurvivors, "the survivor list differs from the one this device signed")
      }
      var valid = Set<SecAggIndex>()
      for s in m.signatures where s.round == configuration.round && graph.areNeighbours(index, s.sender) {
        if let key = configuration.identityKeys[s.sender],
          SecAggCrypto.verify(s.signature, of: configuration.survivorsMessage(m.survivors), publicKey: key)
        {
          valid.insert(s.sender)
        }
      }
      guard valid.count >= configuration.threshold else {
        throw SecAggError(
          .inconsistentSurvivors,
          "only \(valid.count) neighbours confirmed the survivor list; the threshold is \(configuration.threshold)"
        )
      }
    }
    let survivors = Set(m.survivors)
    var selfMask: [RevealedShare] = []
    var maskingKey: [RevealedShare] = []
    for peer in receivedShares.keys.sorted() {
      guard var pair = openShares(from: peer) else {
        rejectedShares += 1
        continue
      }
      if survivors.contains(peer) {
        selfMask.append(RevealedShare(owner: peer, share: pair.selfMask))
      } else {
        maskingKey.append(RevealedShare(owner: peer, share: pair.maskingKey))
      }
      // The share that is not revealed is wiped, so no later message can reveal it.
      SecAggCrypto.zero(&pair.selfMask.values)
      SecAggCrypto.zero(&pair.maskingKey.values)
    }
    wipe()
    step = .finished
    return UnmaskResponse(
      round: configuration.round, sender: index, selfMaskShares: selfMask, maskingKeyShares: maskingKey)
  }

  private func checkSurvivors(_ survivors: [SecAggIndex]) throws(SecAggError) {
    guard zip(survivors, survivors.dropFirst()).allSatisfy({ $0 < $1 }), survivors.contains(index) else {
      throw SecAggError(.inconsistentSurvivors, "the survivor list is unsorted or leaves this device out")
    }
    // A survivor must have shared keys: otherwise nobody holds the shares to remove its masks,
    // and a server claiming otherwise is lying.
    let neighbours = survivors.filter { $0 != index && graph.areNeighbours(index, $0) }
    guard neighbours.allSatisfy({ receivedShares[$0] != nil }) else {
      throw SecAggError(
        .inconsistentSurvivors, "a survivor named by the server never shared keys with this device")
    }
    guard neighbours.count >= configuration.threshold else {
      throw SecAggError(
        .tooFewNeighbours,
        "\(neighbours.count) neighbours survived; the threshold is \(configuration.threshold)")
    }
  }

  private mutating func encryptionKey(for peer: SecAggIndex) -> [UInt8]? {
    if let known = shareKeys[peer] { return known }
    guard let keys = neighbourKeys[peer],
      var agreed = SecAggCrypto.agree(
        secretKey: encryption.secretKey, ownPublicKey: encryption.publicKey,
        peerPublicKey: keys.encryptionKey,
        ownIndex: index, peerIndex: peer)
    else { return nil }
    defer { SecAggCrypto.zero(&agreed) }
    let key = SecAggCrypto.subkey(of: agreed, id: configuration.round, context: "cohortSE")
    shareKeys[peer] = key
    return key
  }

  private mutating func openShares(from peer: SecAggIndex) -> (
    maskingKey: ShamirShare, selfMask: ShamirShare
  )? {
    guard let ciphertext = receivedShares[peer], var key = encryptionKey(for: peer) else { return nil }
    defer { SecAggCrypto.zero(&key) }
    let binding = configuration.shareBinding(sender: peer, recipient: index)
    guard
      var plaintext = SecAggCrypto.open(
        ciphertext, key: key, nonce: binding.nonce, associatedData: binding.associatedData),
      plaintext.count == SecAggConfiguration.sharePlaintextBytes
    else { return nil }
    defer { SecAggCrypto.zero(&plaintext) }
    let shareBytes = 4 + 8 * SecAggConfiguration.chunks
    let header = Array(plaintext[0..<8])
    guard header == Array(binding.associatedData[8..<16]),
      let masking = ShamirShare(
        bytes: Array(plaintext[8..<(8 + shareBytes)]), chunks: SecAggConfiguration.chunks),
      let selfMask = ShamirShare(
        bytes: Array(plaintext[(8 + shareBytes)...]), chunks: SecAggConfiguration.chunks),
      masking.index == index, selfMask.index == index
    else { return nil }
    return (masking, selfMask)
  }

  private mutating func abort(_ error: SecAggError) {
    wipe()
    step = .aborted(error)
  }

  private mutating func wipe() {
    SecAggCrypto.zero(&encryption.secretKey)
    SecAggCrypto.zero(&masking.secretKey)
    SecAggCrypto.zero(&selfMaskSeed)
    SecAggCrypto.zero(&coefficientKey)
    SecAggCrypto.zero(&identitySecretKey)
    for peer in shareKeys.keys { SecAggCrypto.zero(&shareKeys[peer]!) }
    shareKeys = [:]
  }
}

extension SecAggMessage {
  /// The message's kind, for errors and counters.
  public var kindName: String {
    switch self {
    case .advertiseKeys: "advertise_keys"
    case .neighbourKeys: "neighbour_keys"
    case .shareKeys: "share_keys"
    case .sharesForDevice: "shares_for_device"
    case .maskedInput: "masked_input"
    case .consistencyRequest: "consistency_request"
    case .signedSurvivors: "signed_survivors"
    case .unmaskRequest: "unmask_request"
    case .unmaskResponse: "unmask_response"
    }
  }
}
