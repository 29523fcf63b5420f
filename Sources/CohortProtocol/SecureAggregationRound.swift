public import CohortCore
public import CohortSecAgg

/// The server's side of one secure-aggregation round, as every driver runs it: the network
/// service over device streams, the simulator between in-memory devices. It resolves the
/// protocol's parameters and the ring encoding from the plan, gives the members their indices
/// and their `SecureAggregationBegin`, feeds their messages to `SecAggServer`, keeps the step
/// records and decodes the survivors' sum.
///
/// No clock, no I/O, no randomness of its own: the graph seed and the rotation seed come in, the
/// driver closes steps on its deadlines and measures the server's time.
public struct SecureAggregationRound: Sendable {
  /// A device whose report was accepted and that takes part in the protocol.
  public struct Member: Sendable, Hashable {
    public var device: DeviceID
    /// Examples it trained on, as it reported them.
    public var examples: Int
    /// Active variant: its Ed25519 identity public key (on a network, its certificate's key).
    public var identityKey: [UInt8]?
    /// Active variant: its certificate (DER), handed to the other members so each checks the
    /// keys itself instead of trusting the server.
    public var certificate: [UInt8]

    public init(device: DeviceID, examples: Int, identityKey: [UInt8]? = nil, certificate: [UInt8] = []) {
      self.device = device
      self.examples = examples
      self.identityKey = identityKey
      self.certificate = certificate
    }
  }

  public enum State: Sendable {
    /// The protocol is at this step.
    case running(SecAggServer.Step)
    /// The round ended, with a sum or a failure (`result`).
    case finished
  }

  /// What a member is told once the round ends (or once it is refused).
  public enum Outcome: Sendable, Hashable {
    case accepted
    case refused(reason: String)
  }

  public let round: Int
  /// In index order: member i has index i + 1.
  public let members: [Member]
  /// The protocol's public parameters; nil when the round failed before the protocol started.
  public let configuration: SecAggConfiguration?
  /// How updates enter the ring; nil when the round failed before the protocol started.
  public let encoding: SecureAggregationEncoding?
  public let rotationSeed: UInt64
  public private(set) var state: State

  private var server: SecAggServer?
  /// Active variant: every member's certificate, for each member's `SecureAggregationBegin`.
  private let peers: [SecureAggregationBegin.Peer]
  private let indexOf: [DeviceID: SecAggIndex]
  /// Members refused for a message, with the reason they were told.
  private var refused: [DeviceID: String] = [:]
  /// Messages of refused members, refused without reaching the protocol.
  private var lateRejections = 0
  private var serverSeconds: [SecAggServer.Step: Double] = [:]
  /// Set when the round ends.
  private var failure: String?
  private var decoded: (weightedSum: [Double], totalWeight: Double, survivors: [DeviceID])?
  /// The survivors' sum in the ring, before decoding: replicas' sums add in the ring exactly.
  private var ringSum: [UInt32]?
  private var survivorSet: Set<DeviceID> = []

  /// - Parameters:
  ///   - dimension: the number of values in an update.
  ///   - rotationSeed: the round's public rotation seed (`SecureAggregationEncoding.rotationSeed`).
  ///   - graphSeed: the neighbour graph's 32-byte seed.
  ///   - members: the devices of the round, in the order that gives their indices.
  public init(
    plan: Plan, round: Int, dimension: Int, rotationSeed: UInt64, graphSeed: [UInt8], members: [Member]
  ) {
    self.round = round
    self.members = members
    self.rotationSeed = rotationSeed
    var indexOf: [DeviceID: SecAggIndex] = [:]
    for (i, m) in members.enumerated() { indexOf[m.device] = SecAggIndex(i + 1) }
    self.indexOf = indexOf
    state = .finished
    let active = plan.secureAggregation.variant == .active
    peers = active ? members.enumerated().map { .init(index: $0 + 1, certificate: $1.certificate) } : []
    func fail(_ reason: String) -> (SecAggConfiguration?, SecureAggregationEncoding?, String?) {
      (nil, nil, reason)
    }
    let (configuration, encoding, failure): (SecAggConfiguration?, SecureAggregationEncoding?, String?) = {
      guard indexOf.count == members.count else { return fail("a device is a member twice") }
      let parameters: SecAggParameters
      switch SecAggParameters.resolve(plan.secureAggregation, count: members.count) {
      case .success(let p): parameters = p
      case .failure(let error): return fail(error.message)
      }
      let encoding: SecureAggregationEncoding
      switch SecureAggregationEncoding.make(
        plan: plan, round: round, dimension: dimension, rotationSeed: rotationSeed)
      {
      case .success(let e): encoding = e
      case .failure(let error): return fail(error.message)
      }
      var identityKeys: [SecAggIndex: [UInt8]] = [:]
      if active {
        for (i, m) in members.enumerated() {
          guard let key = m.identityKey else {
            return fail("device \(m.device) has no verified certificate for the active variant")
          }
          identityKeys[SecAggIndex(i + 1)] = key
        }
      }
      let configuration = SecAggConfiguration(
        round: UInt64(round), count: members.count, degree: parameters.degree,
        threshold: parameters.threshold, graphSeed: graphSeed, vectorLength: encoding.vectorLength,
        ringBits: encoding.ringBits, variant: active ? .active : .semiHonest, identityKeys: identityKeys)
      return (configuration, encoding, nil)
    }()
    self.configuration = configuration
    self.encoding = encoding
    self.failure = failure
    if let configuration {
      server = SecAggServer(configuration: configuration)
      settle()
    }
  }

  // MARK: Beginning

  /// The message that opens the protocol for `device`; nil for a device that is not a member or
  /// a round that failed before it started.
  public func begin(for device: DeviceID) -> SecureAggregationBegin? {
    guard let configuration, let index = indexOf[device] else { return nil }
    return SecureAggregationBegin(
      round: round, index: Int(index), count: configuration.count, degree: configuration.degree,
      threshold: configuration.threshold, graphSeed: configuration.graphSeed,
      vectorLength: configuration.vectorLength, ringBits: configuration.ringBits, sharedSeed: rotationSeed,
      peers: peers)
  }

  public func index(of device: DeviceID) -> SecAggIndex? { indexOf[device] }

  // MARK: Receiving

  /// A member's message as it came off the wire. Returns why it was refused, or nil when it was
  /// accepted (or ignored: a device that is not a member, or a round no longer running). A
  /// refused member is out of the protocol: it answers each step once, so it is a dropout now,
  /// and later messages of it are refused too.
  public mutating func receive(device: DeviceID, bytes: [UInt8]) -> SecAggServer.Rejection? {
    guard let index = admit(device) else { return refusedAgain(device) }
    return record(server!.receive(bytes: bytes, from: index), device: device)
  }

  /// A member's message already decoded (in-memory drivers).
  public mutating func receive(device: DeviceID, message: SecAggMessage) -> SecAggServer.Rejection? {
    guard let index = admit(device) else { return refusedAgain(device) }
    return record(server!.receive(message, from: index), device: device)
  }

  /// The member's index when its message goes to the protocol.
  private func admit(_ device: DeviceID) -> SecAggIndex? {
    guard case .running = state, refused[device] == nil else { return nil }
    return indexOf[device]
  }

  private mutating func refusedAgain(_ device: DeviceID) -> SecAggServer.Rejection? {
    guard case .running = state, refused[device] != nil else { return nil }
    lateRejections += 1
    return .outOfStep
  }

  private mutating func record(_ rejection: SecAggServer.Rejection?, device: DeviceID) -> SecAggServer
    .Rejection?
  {
    if let rejection { refused[device] = "secure_aggregation_\(rejection.rawValue)" }
    return rejection
  }

  /// Members the current step still waits for (refused members are not waited for).
  public var awaiting: Set<DeviceID> {
    guard case .running = state, let server else { return [] }
    return Set(server.awaiting.map { members[Int($0) - 1].device }).filter { refused[$0] == nil }
  }

  /// Whether nobody the step waits for can still answer, so the driver need not wait for its
  /// deadline.
  public var stepComplete: Bool { awaiting.isEmpty }

  // MARK: Closing steps

  /// Ends the current step (every member answered, or its time is up): the encoded message for
  /// each member that goes on. Empty once the round ended.
  public mutating func closeStep() -> [DeviceID: [UInt8]] {
    var out: [DeviceID: [UInt8]] = [:]
    for (index, message) in closeCurrentStep() { out[members[Int(index) - 1].device] = message.encoded }
    return out
  }

  /// Adds server time, measured by the driver, to a step's record.
  public mutating func addServerSeconds(_ seconds: Double, step: SecAggServer.Step) {
    serverSeconds[step, default: 0] += seconds
  }

  /// Moves on once the server's protocol ended: decodes the sum or keeps the failure.
  private mutating func settle() {
    guard let server else { return }
    switch server.state {
    case .running(let step):
      state = .running(step)
      return
    case .finished(let survivorIndices):
      if let sum = server.sum, let encoding {
        let survivors = survivorIndices.map { members[Int($0) - 1].device }
        let d = encoding.decodeSum(sum, devices: survivors.count)
        decoded = (d.weightedSum, d.totalWeight, survivors)
        ringSum = sum
        survivorSet = Set(survivors)
      } else {
        failure = "secure aggregation gave no sum"
      }
    case .abandoned(let reason):
      failure = reason
    }
    state = .finished
  }

  // MARK: Ending

  /// What the round gave the server; nil while it runs.
  public var result: SecureSum? {
    guard case .finished = state else { return nil }
    let steps: [SecureAggregationStepRecord]
    let rejected: Int
    if let server {
      steps = SecAggServer.Step.allCases.filter {
        $0 != .consistencyCheck || configuration?.variant == .active
      }
      .map { step in
        let r = server.records[step] ?? SecAggServer.StepRecord()
        return SecureAggregationStepRecord(
          step: step.description, entered: r.entered, dropped: r.dropped, bytesUp: r.bytesReceived,
          bytesDown: r.bytesSent, serverSeconds: serverSeconds[step] ?? 0)
      }
      rejected = server.rejections.values.reduce(0, +) + lateRejections
    } else {
      (steps, rejected) = ([], 0)
    }
    guard let decoded else {
      return SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0,
        failure: failure ?? "secure aggregation gave no sum", steps: steps, rejectedMessages: rejected)
    }
    let examples = decoded.survivors.reduce(0) { $0 + members[Int(indexOf[$1]!) - 1].examples }
    var sum = SecureSum(
      weightedSum: decoded.weightedSum, totalWeight: decoded.totalWeight, survivors: decoded.survivors,
      examples: examples, failure: nil, steps: steps, rejectedMessages: rejected)
    sum.ringSum = ringSum
    sum.ringBits = encoding?.ringBits
    return sum
  }

  /// What `device` is told: accepted when its input is in the sum (and it was never refused),
  /// otherwise why not. Nil while the round runs, unless the device was refused already.
  public func outcome(of device: DeviceID) -> Outcome? {
    if let reason = refused[device] { return .refused(reason: reason) }
    guard case .finished = state else { return nil }
    if survivorSet.contains(device) { return .accepted }
    return .refused(reason: decoded != nil ? "secure_aggregation_dropout" : "secure_aggregation_failed")
  }
}

extension SecureAggregationRound: InMemorySecAggServer {
  public var stepInProgress: SecAggServer.Step? {
    if case .running(let step) = state { return step }
    return nil
  }

  public mutating func deliver(_ message: SecAggMessage, from sender: SecAggIndex) {
    guard Int(sender) >= 1, Int(sender) <= members.count else { return }
    _ = receive(device: members[Int(sender) - 1].device, message: message)
  }

  public mutating func closeCurrentStep() -> [SecAggIndex: SecAggMessage] {
    guard case .running = state else { return [:] }
    let outgoing = server!.closeStep()
    settle()
    return outgoing
  }
}
