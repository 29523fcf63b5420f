/// The server's side of a secure-aggregation round: a state machine fed device messages as they
/// arrive and told by its driver when a step's time is up. It holds only public keys,
/// ciphertexts it cannot open, the running sum of masked inputs and, at the end, the shares
/// devices reveal; the sum of the survivors' inputs is the only vector it ever unmasks.
///
/// No I/O and no clock: the driver (the simulator, or the network service) delivers messages,
/// closes steps on its deadlines and measures time.
public struct SecAggServer: Sendable {
  public enum Step: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case advertiseKeys, shareKeys, maskedInput, consistencyCheck, unmasking

    public var description: String {
      switch self {
      case .advertiseKeys: "advertise_keys"
      case .shareKeys: "share_keys"
      case .maskedInput: "masked_input"
      case .consistencyCheck: "consistency_check"
      case .unmasking: "unmasking"
      }
    }
  }

  public enum State: Sendable, Equatable {
    case running(Step)
    /// The sum of the survivors' inputs in Z/2^b, and who they are.
    case finished(survivors: [SecAggIndex])
    case abandoned(String)
  }

  /// Why a device message was refused. Each is counted; none stops the round.
  public enum Rejection: String, Sendable, Hashable, CaseIterable {
    case truncated, malformed
    case wrongRound = "wrong_round"
    case wrongSender = "wrong_sender"
    case replayed
    case outOfStep = "out_of_step"
    case badSignature = "bad_signature"
    case invalidContent = "invalid_content"
  }

  /// What happened at each step, for the round's record.
  public struct StepRecord: Sendable, Hashable {
    public var entered = 0
    public var dropped = 0
    public var bytesReceived = 0
    public var bytesSent = 0

    public init() {}
  }

  public let configuration: SecAggConfiguration
  public private(set) var state: State
  public private(set) var records: [Step: StepRecord] = [:]
  public private(set) var rejections: [Rejection: Int] = [:]

  private let graph: NeighbourGraph
  /// Devices still in the protocol at the current step.
  private var expected: Set<SecAggIndex>
  /// Devices that answered the current step.
  private var answered: Set<SecAggIndex> = []
  private var keys: [SecAggIndex: AdvertiseKeys] = [:]
  /// Ciphertexts waiting for their recipient: recipient → (sender → ciphertext).
  private var mailbox: [SecAggIndex: [SecAggIndex: [UInt8]]] = [:]
  /// Devices that completed step 1 (U2).
  private var shared: Set<SecAggIndex> = []
  /// Running sum of masked inputs.
  private var maskedSum: [UInt32]
  /// Devices whose masked input is in `maskedSum` (U3), sorted once step 2 closes.
  private var survivors: [SecAggIndex] = []
  private var signatures: [SecAggIndex: SignedSurvivors] = [:]
  private var selfMaskShares: [SecAggIndex: [ShamirShare]] = [:]
  private var maskingKeyShares: [SecAggIndex: [ShamirShare]] = [:]
  private var result: [UInt32]? = nil

  public init(configuration: SecAggConfiguration) {
    self.configuration = configuration
    graph = NeighbourGraph(
      count: configuration.count, degree: configuration.degree, seed: configuration.graphSeed)
    maskedSum = [UInt32](repeating: 0, count: max(configuration.vectorLength, 0))
    expected = Set((1...max(configuration.count, 1)).map { SecAggIndex($0) })
    let problems = configuration.problems
    state = problems.isEmpty ? .running(.advertiseKeys) : .abandoned(problems.joined(separator: "; "))
    records[.advertiseKeys, default: StepRecord()].entered = configuration.count
  }

  public var step: Step? {
    if case .running(let s) = state { return s }
    return nil
  }

  /// The unmasked sum of the survivors' inputs, reduced to the ring; nil until finished.
  public var sum: [UInt32]? { result }

  /// Whether every device still expected at this step has answered, so the driver need not wait
  /// for the deadline.
  public var stepComplete: Bool { answered.count == expected.count }

  /// Devices expected to answer the current step.
  public var awaiting: Set<SecAggIndex> { expected.subtracting(answered) }

  // MARK: Receiving

  /// Decodes and handles one message from the device authenticated as `sender`.
  @discardableResult
  public mutating func receive(bytes: [UInt8], from sender: SecAggIndex) -> Rejection? {
    let message: SecAggMessage
    do {
      message = try SecAggMessage(decoding: bytes)
    } catch .truncated {
      return reject(.truncated)
    } catch {
      return reject(.malformed)
    }
    return receive(message, from: sender)
  }

  /// Handles one message from the device authenticated as `sender`; nil when accepted.
  @discardableResult
  public mutating func receive(_ message: SecAggMessage, from sender: SecAggIndex) -> Rejection? {
    guard case .running(let step) = state else { return reject(.outOfStep) }
    guard message.round == configuration.round else { return reject(.wrongRound) }
    guard let claimed = message.sender, claimed == sender else { return reject(.wrongSender) }
    guard expected.contains(sender) else {
      // A device no longer in the protocol, or never in it.
      return reject(Int(sender) >= 1 && Int(sender) <= configuration.count ? .outOfStep : .wrongSender)
    }
    let rejection: Rejection?
    switch (step, message) {
    case (.advertiseKeys, .advertiseKeys(let m)):
      rejection = answered.contains(sender) ? .replayed : accept(m)
    case (.shareKeys, .shareKeys(let m)): rejection = answered.contains(sender) ? .replayed : accept(m)
    case (.maskedInput, .maskedInput(let m)): rejection = answered.contains(sender) ? .replayed : accept(m)
    case (.consistencyCheck, .signedSurvivors(let m)):
      rejection = answered.contains(sender) ? .replayed : accept(m)
    case (.unmasking, .unmaskResponse(let m)): rejection = answered.contains(sender) ? .replayed : accept(m)
    default:
      // A message of an earlier step arriving again is a replay; anything else is out of step.
      rejection = message.stepOrder < step.rawValue ? .replayed : .outOfStep
    }
    if let rejection { return reject(rejection) }
    answered.insert(sender)
    records[step, default: StepRecord()].bytesReceived += message.byteCount
    return nil
  }

  private mutating func reject(_ r: Rejection) -> Rejection {
    rejections[r, default: 0] += 1
    return r
  }

  private func validate(_ m: AdvertiseKeys) -> Rejection? {
    guard m.encryptionKey.count == 32, m.maskingKey.count == 32 else { return .invalidContent }
    if configuration.variant == .active {
      guard let identity = configuration.identityKeys[m.sender],
        SecAggCrypto.verify(
          m.signature,
          of: configuration.advertisedMessage(
            sender: m.sender, encryptionKey: m.encryptionKey, maskingKey: m.maskingKey),
          publicKey: identity)
      else { return .badSignature }
    } else if !m.signature.isEmpty {
      return .invalidContent
    }
    return nil
  }

  private mutating func accept(_ m: AdvertiseKeys) -> Rejection? {
    let r = validate(m)
    if r == nil { keys[m.sender] = m }
    return r
  }

  private mutating func accept(_ m: ShareKeys) -> Rejection? {
    var recipients = Set<SecAggIndex>()
    for s in m.shares {
      guard s.ciphertext.count == SecAggConfiguration.shareCiphertextBytes, keys[s.peer] != nil,
        s.peer != m.sender, graph.areNeighbours(m.sender, s.peer), recipients.insert(s.peer).inserted
      else { return .invalidContent }
    }
    // A device must share with every neighbour that advertised keys; fewer would leave some pair
    // masked on one side only.
    guard recipients.count == neighbours(of: m.sender, in: expectedAtStart(.shareKeys)).count else {
      return .invalidContent
    }
    for s in m.shares { mailbox[s.peer, default: [:]][m.sender] = s.ciphertext }
    return nil
  }

  private mutating func accept(_ m: MaskedInput) -> Rejection? {
    guard m.vector.count == configuration.vectorLength, m.ringBits == configuration.ringBits else {
      return .invalidContent
    }
    let mask = configuration.ringMask
    guard m.vector.allSatisfy({ $0 & ~mask == 0 }) else { return .invalidContent }
    m.vector.withUnsafeBufferPointer { v in
      maskedSum.withUnsafeMutableBufferPointer { s in
        for i in 0..<v.count { s[i] &+= v[i] }
      }
    }
    return nil
  }

  private mutating func accept(_ m: SignedSurvivors) -> Rejection? {
    guard let identity = configuration.identityKeys[m.sender],
      SecAggCrypto.verify(m.signature, of: configuration.survivorsMessage(survivors), publicKey: identity)
    else { return .badSignature }
    signatures[m.sender] = m
    return nil
  }

  private mutating func accept(_ m: UnmaskResponse) -> Rejection? {
    let survivorSet = Set(survivors)
    var owners = Set<SecAggIndex>()
    // Self-mask shares only for survivors, masking-key shares only for devices that shared keys
    // and then dropped: a response that mixes them up is refused whole.
    for r in m.selfMaskShares {
      guard survivorSet.contains(r.owner), r.share.index == m.sender, graph.areNeighbours(m.sender, r.owner),
        r.share.values.count == SecAggConfiguration.chunks, owners.insert(r.owner).inserted
      else { return .invalidContent }
    }
    for r in m.maskingKeyShares {
      guard shared.contains(r.owner), !survivorSet.contains(r.owner), r.share.index == m.sender,
        graph.areNeighbours(m.sender, r.owner), r.share.values.count == SecAggConfiguration.chunks,
        owners.insert(r.owner).inserted
      else { return .invalidContent }
    }
    for r in m.selfMaskShares { selfMaskShares[r.owner, default: []].append(r.share) }
    for r in m.maskingKeyShares { maskingKeyShares[r.owner, default: []].append(r.share) }
    return nil
  }

  // MARK: Closing steps

  /// Ends the current step: devices that did not answer are dropped. Returns the message for
  /// each device that goes on (empty when the round finished or was abandoned). The driver calls
  /// this when `stepComplete` or when the step's deadline passes.
  public mutating func closeStep() -> [SecAggIndex: SecAggMessage] {
    guard case .running(let step) = state else { return [:] }
    let dropped = expected.count - answered.count
    records[step, default: StepRecord()].dropped = dropped
    let outgoing: [SecAggIndex: SecAggMessage]
    switch step {
    case .advertiseKeys: outgoing = closeAdvertiseKeys()
    case .shareKeys: outgoing = closeShareKeys()
    case .maskedInput: outgoing = closeMaskedInput()
    case .consistencyCheck: outgoing = closeConsistencyCheck()
    case .unmasking:
      finish()
      outgoing = [:]
    }
    if case .running(let next) = state {
      records[next, default: StepRecord()].entered = expected.count
      records[next, default: StepRecord()].bytesSent = outgoing.values.reduce(0) { $0 + $1.byteCount }
    }
    return outgoing
  }

  private var startSets: [Step: Set<SecAggIndex>] = [:]

  private func expectedAtStart(_ step: Step) -> Set<SecAggIndex> { startSets[step] ?? [] }

  private func neighbours(of device: SecAggIndex, in set: Set<SecAggIndex>) -> [SecAggIndex] {
    if graph.isComplete { return set.filter { $0 != device }.sorted() }
    return graph.neighbours(of: device).filter { set.contains($0) }
  }

  private mutating func advance(to next: Step, with devices: Set<SecAggIndex>) {
    expected = devices
    answered = []
    startSets[next] = devices
    state = .running(next)
  }

  private mutating func abandon(_ reason: String) {
    state = .abandoned(reason)
    expected = []
    maskedSum = []
  }

  /// Removes, until none is left, devices with fewer than `threshold` neighbours in the set:
  /// nobody could later reconstruct their secrets.
  private func pruned(_ set: Set<SecAggIndex>) -> Set<SecAggIndex> {
    var set = set
    var changed = true
    while changed {
      changed = false
      for d in set.sorted() where neighbours(of: d, in: set).count < configuration.threshold {
        set.remove(d)
        changed = true
      }
    }
    return set
  }

  private mutating func closeAdvertiseKeys() -> [SecAggIndex: SecAggMessage] {
    let u1 = pruned(answered)
    guard u1.count > configuration.threshold else {
      abandon(
        "only \(u1.count) devices advertised keys with enough neighbours; the threshold \(configuration.threshold) needs more"
      )
      return [:]
    }
    keys = keys.filter { u1.contains($0.key) }
    advance(to: .shareKeys, with: u1)
    var out: [SecAggIndex: SecAggMessage] = [:]
    for d in u1 {
      out[d] = .neighbourKeys(
        NeighbourKeys(round: configuration.round, keys: neighbours(of: d, in: u1).map { keys[$0]! }))
    }
    return out
  }

  private mutating func closeShareKeys() -> [SecAggIndex: SecAggMessage] {
    // A device's secrets are held by the neighbours it shared with that also shared: each must
    // keep at least t of them, or its masks could never be removed.
    let u2 = pruned(answered)
    guard u2.count > configuration.threshold else {
      abandon("only \(u2.count) devices shared keys; the threshold \(configuration.threshold) needs more")
      return [:]
    }
    shared = u2
    advance(to: .maskedInput, with: u2)
    var out: [SecAggIndex: SecAggMessage] = [:]
    for d in u2 {
      let inbox = mailbox[d] ?? [:]
      let shares = inbox.keys.filter { u2.contains($0) }.sorted().map {
        EncryptedShare(peer: $0, ciphertext: inbox[$0]!)
      }
      out[d] = .sharesForDevice(SharesForDevice(round: configuration.round, shares: shares))
    }
    mailbox = [:]
    return out
  }

  private mutating func closeMaskedInput() -> [SecAggIndex: SecAggMessage] {
    let u3 = answered
    survivors = u3.sorted()
    guard u3.count >= configuration.threshold else {
      abandon(
        "only \(u3.count) devices sent a masked input; at least the threshold \(configuration.threshold) are needed"
      )
      return [:]
    }
    let list = SurvivorList(round: configuration.round, survivors: survivors)
    if configuration.variant == .active {
      advance(to: .consistencyCheck, with: u3)
      return Dictionary(uniqueKeysWithValues: u3.map { ($0, SecAggMessage.consistencyRequest(list)) })
    }
    advance(to: .unmasking, with: u3)
    return Dictionary(uniqueKeysWithValues: u3.map { ($0, SecAggMessage.unmaskRequest(list)) })
  }

  private mutating func closeConsistencyCheck() -> [SecAggIndex: SecAggMessage] {
    let u4 = answered
    guard u4.count >= configuration.threshold else {
      abandon(
        "only \(u4.count) devices confirmed the survivor list; the threshold is \(configuration.threshold)")
      return [:]
    }
    advance(to: .unmasking, with: u4)
    var out: [SecAggIndex: SecAggMessage] = [:]
    for d in u4 {
      let proofs = neighbours(of: d, in: u4).compactMap { signatures[$0] }
      out[d] = .unmaskRequest(
        SurvivorList(round: configuration.round, survivors: survivors, signatures: proofs))
    }
    return out
  }

  /// Removes every self mask of a survivor and every pairwise mask a survivor shares with a
  /// device that dropped after sharing keys; the masks between survivors cancel by themselves.
  private mutating func finish() {
    var sum = maskedSum
    var cache: [[SecAggIndex]: [UInt64]] = [:]
    func reconstruct(_ shares: [ShamirShare]?, owner: SecAggIndex) -> [UInt8]? {
      guard let shares, shares.count >= configuration.threshold else { return nil }
      let used = Array(shares.sorted { $0.index < $1.index }.prefix(configuration.threshold))
      let indices = used.map(\.index)
      let coefficients = cache[indices] ?? Shamir.lagrangeAtZero(indices)
      cache[indices] = coefficients
      return try? Shamir.reconstruct(
        used, coefficients: coefficients, secretLength: SecAggConfiguration.secretLength)
    }
    for owner in survivors {
      guard var seed = reconstruct(selfMaskShares[owner], owner: owner) else {
        abandon(
          "device \(owner)'s self mask cannot be removed: \(selfMaskShares[owner]?.count ?? 0) shares arrived and "
            + "\(configuration.threshold) are needed")
        return
      }
      var key = SecAggCrypto.subkey(of: seed, id: configuration.round, context: "cohortSM")
      SecAggCrypto.addMask(key: key, sign: -1, into: &sum)
      SecAggCrypto.zero(&key)
      SecAggCrypto.zero(&seed)
    }
    let survivorSet = Set(survivors)
    for owner in shared.subtracting(survivorSet).sorted() {
      guard var secret = reconstruct(maskingKeyShares[owner], owner: owner),
        let publicKey = SecAggCrypto.publicKey(ofSecret: secret), publicKey == keys[owner]?.maskingKey
      else {
        abandon(
          "device \(owner) dropped after sharing keys and its masking key cannot be reconstructed from the "
            + "\(maskingKeyShares[owner]?.count ?? 0) shares that arrived (\(configuration.threshold) needed)"
        )
        return
      }
      defer { SecAggCrypto.zero(&secret) }
      for peer in neighbours(of: owner, in: survivorSet) {
        guard
          var agreed = SecAggCrypto.agree(
            secretKey: secret, ownPublicKey: publicKey, peerPublicKey: keys[peer]!.maskingKey,
            ownIndex: owner,
            peerIndex: peer)
        else { continue }
        var key = pairwiseMaskKey(agreed: agreed, round: configuration.round)
        // The survivor added the mask with its own sign; subtracting it takes the opposite.
        SecAggCrypto.addMask(key: key, sign: -pairwiseSign(own: peer, peer: owner), into: &sum)
        SecAggCrypto.zero(&agreed)
        SecAggCrypto.zero(&key)
      }
    }
    let mask = configuration.ringMask
    for i in sum.indices { sum[i] &= mask }
    result = sum
    selfMaskShares = [:]
    maskingKeyShares = [:]
    state = .finished(survivors: survivors)
  }
}

extension SecAggMessage {
  /// The protocol step a device message belongs to (server messages sort before their replies).
  var stepOrder: Int {
    switch self {
    case .advertiseKeys: SecAggServer.Step.advertiseKeys.rawValue
    case .neighbourKeys, .shareKeys: SecAggServer.Step.shareKeys.rawValue
    case .sharesForDevice, .maskedInput: SecAggServer.Step.maskedInput.rawValue
    case .consistencyRequest, .signedSurvivors: SecAggServer.Step.consistencyCheck.rawValue
    case .unmaskRequest, .unmaskResponse: SecAggServer.Step.unmasking.rawValue
    }
  }
}
