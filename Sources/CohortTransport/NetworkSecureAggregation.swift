public import CohortCore
public import CohortProtocol
import CohortSecAgg
import Foundation
public import Logging

/// Secure aggregation over device streams: the same `SecAggServer` state machine as the
/// simulator's, fed by the devices that reported, each over its own participation stream.
/// A step closes when every remaining device has answered or its time is up; a device that
/// disconnects or stays silent is a dropout, and the protocol copes with it as designed.
///
/// In the active variant every member's signing key comes from the certificate it presented at
/// check-in (checked by the service); `SecAggBegin` hands every member the others' certificates,
/// so each device checks the keys itself instead of trusting this server.
public actor NetworkSecureAggregation: SecureAggregationDriver {
  struct Member {
    var examples: Int
    var mailbox: DeviceMailbox
    /// The device's verified certificate (active variant).
    var certificate: VerifiedDeviceCertificate?
  }

  let plan: Plan
  let dimension: Int
  /// The run seed the rounds' rotation signs come from.
  let runSeed: UInt64
  /// How long the server waits for a step's answers.
  let stepTimeout: Double
  let logger: Logger
  /// Devices whose report was accepted, by round, with their stream's mailbox.
  private var enrolled: [Int: [DeviceID: Member]] = [:]
  /// The protocol of the round being aggregated.
  private var server: SecAggServer?
  private var running: (round: Int, indexOf: [DeviceID: SecAggIndex])?
  private var stepWaiter: CheckedContinuation<Void, Never>?
  private var stepNumber = 0

  public init(plan: Plan, dimension: Int, runSeed: UInt64, stepTimeout: Double, logger: Logger) {
    self.runSeed = runSeed
    self.plan = plan
    self.dimension = dimension
    self.stepTimeout = stepTimeout
    self.logger = logger
  }

  var isActive: Bool { plan.secureAggregation.variant == .active }

  func enrol(
    round: Int, device: DeviceID, examples: Int, mailbox: DeviceMailbox,
    certificate: VerifiedDeviceCertificate? = nil
  ) {
    // Anything older belongs to rounds that closed without the protocol.
    for r in enrolled.keys where r < round { enrolled[r] = nil }
    enrolled[round, default: [:]][device] = Member(
      examples: examples, mailbox: mailbox, certificate: certificate)
  }

  /// The device's stream ended or its report was refused.
  func leave(round: Int, device: DeviceID) {
    enrolled[round]?[device] = nil
    if running?.round == round { wakeIfDone() }
  }

  /// A device's answer to the current step.
  func receive(round: Int, device: DeviceID, bytes: [UInt8]) {
    guard let running, running.round == round, let index = running.indexOf[device], server != nil else {
      return
    }
    if let rejection = server!.receive(bytes: bytes, from: index) {
      logger.debug(
        "secure-aggregation message refused",
        metadata: ["device": "\(device)", "round": "\(round)", "reason": "\(rejection.rawValue)"])
      // A device answers each step once, so a refused answer (a key not signed by its
      // certificate's key, a malformed vector) is the last it gives: it is out of the protocol
      // now, as a dropout, and the step need not wait for it until its time is up.
      enrolled[round]?[device]?.mailbox.post(
        .secAggFinished(accepted: false, reason: "secure_aggregation_\(rejection.rawValue)"))
      enrolled[round]?[device] = nil
    }
    wakeIfDone()
  }

  /// Closes the step early once nobody it waits for can still answer.
  private func wakeIfDone() {
    if stepDone { wakeStep() }
  }

  private var stepDone: Bool {
    guard let server else { return true }
    return server.stepComplete || server.awaiting.allSatisfy { !isConnected($0) }
  }

  private func wakeStep() {
    stepWaiter?.resume()
    stepWaiter = nil
  }

  /// Waits until the step's answers are in, or its time is up.
  private func waitForStep() async {
    if stepDone { return }
    stepNumber += 1
    let step = stepNumber
    let timeout = stepTimeout
    let timer = Task { [weak self] in
      try? await Task.sleep(for: .seconds(timeout))
      await self?.stepTimedOut(step)
    }
    await withCheckedContinuation { stepWaiter = $0 }
    timer.cancel()
  }

  private func stepTimedOut(_ step: Int) {
    if step == stepNumber { wakeStep() }
  }

  private func isConnected(_ index: SecAggIndex) -> Bool {
    guard let running else { return false }
    guard let device = running.indexOf.first(where: { $0.value == index })?.key else { return false }
    return enrolled[running.round]?[device] != nil
  }

  public func secureSum(round: Int, devices: [DeviceID]) async -> SecureSum {
    // In the active variant a member needs a verified certificate (the service refuses a report
    // without one, so this only guards the invariant).
    let members = devices.filter { device in
      enrolled[round]?[device].map { !isActive || $0.certificate != nil } ?? false
    }
    func failed(_ reason: String) -> SecureSum {
      finishAll(round: round, survivors: [], reason: reason)
      return SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0, failure: reason, steps: [],
        rejectedMessages: 0)
    }
    guard members.count >= 2 else {
      return failed("secure aggregation needs at least 2 devices, got \(members.count)")
    }
    let parameters: SecAggParameters
    switch SecAggParameters.resolve(plan.secureAggregation, count: members.count) {
    case .success(let p): parameters = p
    case .failure(let error): return failed(error.message)
    }
    // The rotation is public randomness: drawn from the run seed, as the simulator does, so a run
    // replays the simulation of the same seed. Masks and graph seeds stay cryptographic.
    let rotationSeed = SecureAggregationEncoding.rotationSeed(runSeed: runSeed, round: round, plan: plan)
    let encoding: SecureAggregationEncoding
    switch SecureAggregationEncoding.make(
      plan: plan, round: round, dimension: dimension, rotationSeed: rotationSeed)
    {
    case .success(let e): encoding = e
    case .failure(let error): return failed(error.message)
    }
    let graphSeed = SecAggCrypto.randomSeed()
    var indexOf: [DeviceID: SecAggIndex] = [:]
    for (i, d) in members.enumerated() { indexOf[d] = SecAggIndex(i + 1) }
    // Active variant: each member's identity key is the one its certificate carries.
    var identityKeys: [SecAggIndex: [UInt8]] = [:]
    var peers: [SecureAggregationBegin.Peer] = []
    if isActive {
      for (device, index) in indexOf.sorted(by: { $0.value < $1.value }) {
        guard let certificate = enrolled[round]?[device]?.certificate else {
          return failed("device \(device) has no verified certificate for the active variant")
        }
        identityKeys[index] = certificate.signingPublicKey
        peers.append(.init(index: Int(index), certificate: certificate.der))
      }
    }
    let configuration = SecAggConfiguration(
      round: UInt64(round), count: members.count, degree: parameters.degree, threshold: parameters.threshold,
      graphSeed: graphSeed, vectorLength: encoding.vectorLength, ringBits: encoding.ringBits,
      variant: isActive ? .active : .semiHonest, identityKeys: identityKeys)
    server = SecAggServer(configuration: configuration)
    running = (round, indexOf)
    let clock = ContinuousClock()
    var serverSeconds: [SecAggServer.Step: Double] = [:]
    for (device, index) in indexOf {
      enrolled[round]?[device]?.mailbox.post(
        .secAggBegin(
          SecureAggregationBegin(
            round: round, index: Int(index), count: configuration.count, degree: configuration.degree,
            threshold: configuration.threshold, graphSeed: graphSeed,
            vectorLength: configuration.vectorLength,
            ringBits: configuration.ringBits, sharedSeed: rotationSeed, peers: peers)))
    }
    while case .running(let step) = server!.state {
      await waitForStep()
      var outgoing: [SecAggIndex: SecAggMessage] = [:]
      let elapsed = clock.measure { outgoing = server!.closeStep() }
      serverSeconds[step, default: 0] +=
        Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
      for (device, index) in indexOf {
        guard let message = outgoing[index] else { continue }
        enrolled[round]?[device]?.mailbox.post(.secAggRequest(message.encoded))
      }
    }
    let steps = SecAggServer.Step.allCases.filter { $0 != .consistencyCheck || isActive }.map { step in
      let r = server!.records[step] ?? SecAggServer.StepRecord()
      return SecureAggregationStepRecord(
        step: step.description, entered: r.entered, dropped: r.dropped, bytesUp: r.bytesReceived,
        bytesDown: r.bytesSent, serverSeconds: serverSeconds[step] ?? 0)
    }
    let rejected = server!.rejections.values.reduce(0, +)
    let outcome = server!
    server = nil
    running = nil
    switch outcome.state {
    case .finished(let survivorIndices):
      guard let sum = outcome.sum else { return failed("secure aggregation gave no sum") }
      let survivors = survivorIndices.map { i in members[Int(i) - 1] }
      let decoded = encoding.decodeSum(sum, devices: survivors.count)
      let examples = survivors.reduce(0) { $0 + (enrolled[round]?[$1]?.examples ?? 0) }
      finishAll(round: round, survivors: Set(survivors), reason: "")
      return SecureSum(
        weightedSum: decoded.weightedSum, totalWeight: decoded.totalWeight, survivors: survivors,
        examples: examples, failure: nil, steps: steps, rejectedMessages: rejected)
    case .abandoned(let reason):
      finishAll(round: round, survivors: [], reason: reason)
      return SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0, failure: reason, steps: steps,
        rejectedMessages: rejected)
    case .running:
      return failed("secure aggregation stopped while running")
    }
  }

  /// Tells every enrolled device of the round whether its input is in the sum.
  private func finishAll(round: Int, survivors: Set<DeviceID>, reason: String) {
    for (device, member) in enrolled[round] ?? [:] {
      let accepted = survivors.contains(device)
      member.mailbox.post(
        .secAggFinished(
          accepted: accepted,
          reason: accepted
            ? "" : (reason.isEmpty ? "secure_aggregation_dropout" : "secure_aggregation_failed")))
    }
    enrolled[round] = nil
  }
}
