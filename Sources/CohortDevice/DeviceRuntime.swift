import CohortCore
public import CohortML
public import CohortProtocol
import CohortSecAgg
import Foundation
public import Logging

/// The examples a device trains and evaluates on.
public struct LocalExamples: Sendable {
  public var train: Dataset
  /// Only these examples of `train` (the simulator's devices share one dataset); nil for all.
  public var indices: [Int]?
  public var test: Dataset?

  public init(train: Dataset, indices: [Int]? = nil, test: Dataset? = nil) {
    self.train = train
    self.indices = indices
    self.test = test
  }
}

/// Settings of a device runtime. The device's own configuration, never the server's plan,
/// decides what runs here: the plan only parameterizes the built-in training.
public struct DeviceRuntimeConfiguration: Sendable {
  public var device: DeviceID
  public var population: String
  /// The root of the device's random streams (training order, encodings). A real device
  /// draws it once and keeps it; tests pass the simulator's seed to reproduce a simulation.
  public var seed: UInt64
  /// Back-off after failures: doubles from `initialBackoff` up to `maximumBackoff`, full jitter.
  public var initialBackoff: Double
  public var maximumBackoff: Double
  /// The largest checkpoint the device accepts, in bytes.
  public var maxCheckpointBytes: Int
  /// The device's certificate, signing key and CA for the active secure-aggregation variant
  /// (`--signing-key`); nil: the device cannot take part in that variant.
  public var identity: (any SecureAggregationIdentity)?

  public init(
    device: DeviceID, population: String = "default", seed: UInt64, initialBackoff: Double = 1,
    maximumBackoff: Double = 300, maxCheckpointBytes: Int = 512 << 20,
    identity: (any SecureAggregationIdentity)? = nil
  ) {
    self.identity = identity
    self.device = device
    self.population = population
    self.seed = seed
    self.initialBackoff = initialBackoff
    self.maximumBackoff = maximumBackoff
    self.maxCheckpointBytes = maxCheckpointBytes
  }
}

/// The Linux client runtime: a pump around `DeviceConversation` (one stream: check-in, task,
/// checkpoint, training with the same `LocalTraining` as the simulator, upload or secure
/// aggregation, acknowledgement) and `DeviceSession` (when to come back: the server's pace
/// steering, and back-off with jitter after failures).
public actor DeviceRuntime {
  public let configuration: DeviceRuntimeConfiguration
  let channel: any ParticipationChannel
  let examples: @Sendable () throws -> LocalExamples
  /// Nil when the device may work now; otherwise why not.
  let ineligibility: @Sendable () -> String?
  /// Called after every participation with its result and start and end times (seconds since 1970).
  let observe: @Sendable (ParticipationResult, Double, Double) -> Void
  let logger: Logger
  /// The cached checkpoint and any unacknowledged upload, from one participation to the next.
  private var memory = DeviceConversation.Memory()
  private var trainers: [String: LocalTraining] = [:]
  /// SCAFFOLD: this device's control variate c_k, kept from one participation to the next (nil
  /// until it first trains: then zeros).
  private var control: [Float]?
  private var session: DeviceSession
  private var random: RandomStream
  /// Completed participations by outcome, for callers' summaries.
  public private(set) var history: [ParticipationResult] = []
  /// Peers' certificates this device refused in secure-aggregation rounds, by reason.
  public private(set) var refusedCertificates: [DeviceCertificateRefusal.Reason: Int] = [:]

  /// An upload the server has not acknowledged (the connection was lost during the report);
  /// the next participation sends it on a new stream while the round's deadline allows.
  public var pendingUpload: PendingUpload? { memory.pendingUpload }

  public init(
    configuration: DeviceRuntimeConfiguration, connection: any ParticipationChannel,
    examples: @escaping @Sendable () throws -> LocalExamples,
    ineligibility: @escaping @Sendable () -> String? = { nil },
    observe: @escaping @Sendable (ParticipationResult, Double, Double) -> Void = { _, _, _ in },
    logger: Logger
  ) {
    self.observe = observe
    self.configuration = configuration
    self.channel = connection
    self.examples = examples
    self.ineligibility = ineligibility
    self.logger = logger
    session = DeviceSession(
      configuration: .init(
        device: configuration.device, population: configuration.population,
        initialBackoff: configuration.initialBackoff, maximumBackoff: configuration.maximumBackoff))
    random = RandomStream(seed: configuration.seed, purpose: "device-runtime", device: configuration.device)
  }

  /// Participates until `participations` reports have been acknowledged (nil: forever) or the
  /// task is cancelled, sleeping between attempts as the server and the back-off say.
  public func run(participations: Int? = nil) async {
    var reported = 0
    while !Task.isCancelled {
      if let participations, reported >= participations { return }
      let now = Date().timeIntervalSince1970
      if let reason = ineligibility() {
        logger.info("not eligible", metadata: ["reason": "\(reason)"])
        await sleep(window: session.connectionLost(now: now).sleepWindow ?? now...(now + 60))
        continue
      }
      _ = session.wake(now: now)
      let outcome = await participate()
      history.append(outcome)
      let after = Date().timeIntervalSince1970
      observe(outcome, now, after)
      switch outcome {
      case .retry(let earliest, let latest):
        // The machine checked the window: finite, ordered and bounded.
        let actions = session.received(.retry(window: (after + earliest)...(after + latest)), now: after)
        await sleep(window: actions.sleepWindow ?? after...after)
      case .finished(let round, let accepted, let reason):
        reported += 1
        logger.info(
          "participation finished",
          metadata: ["round": "\(round)", "accepted": "\(accepted)", "reason": "\(reason)"])
        // Back to idle; the next check-in learns from pace steering when to come back.
        _ = session.connectionLost(now: after)
        session = DeviceSession(configuration: session.configuration)
      case .refused(let reason, let detail):
        logger.notice("participation refused", metadata: ["reason": "\(reason)", "detail": "\(detail)"])
        await sleep(window: session.connectionLost(now: after).sleepWindow ?? after...(after + 1))
      case .admitted:
        continue
      case .abandoned(let why):
        // A TLS mistake does not mend itself by retrying: say it where an operator looks.
        if why.contains("TLS") {
          logger.warning("cannot connect", metadata: ["reason": "\(why)"])
        } else {
          logger.info("participation abandoned", metadata: ["reason": "\(why)"])
        }
        await sleep(window: session.connectionLost(now: after).sleepWindow ?? after...(after + 1))
      }
    }
  }

  private func sleep(window: ClosedRange<Double>) async {
    let now = Date().timeIntervalSince1970
    let at = window.lowerBound + random.uniform() * (window.upperBound - window.lowerBound)
    if at > now { try? await Task.sleep(for: .seconds(at - now)) }
  }

  /// Checks in and ends the stream at the server's first answer (connectivity checks, `cohort load`).
  public func checkInOnly() async -> ParticipationResult {
    await participate(extent: .checkIn)
  }

  /// Checks in and, once admitted, holds the stream open and idle until the calling task is
  /// cancelled; `onAdmitted` is called when the server admits the device (`cohort load`).
  public func holdSession(onAdmitted: @escaping @Sendable () -> Void) async -> ParticipationResult {
    await participate(extent: .hold, onAdmitted: onAdmitted)
  }

  /// One participation over one stream, from check-in to acknowledgement.
  public func participate() async -> ParticipationResult {
    await participate(extent: .full)
  }

  func participate(extent: DeviceConversation.Extent, onAdmitted: (@Sendable () -> Void)? = nil) async
    -> ParticipationResult
  {
    let machine = DeviceConversation(
      configuration: .init(
        device: configuration.device, population: configuration.population, seed: configuration.seed,
        maxCheckpointBytes: configuration.maxCheckpointBytes,
        certificate: configuration.identity?.certificateDER,
        maximumRetryWait: max(configuration.maximumBackoff, 86_400)),
      extent: extent, memory: memory)
    do {
      let (result, kept) = try await channel.participate { [self] stream in
        var machine = machine
        await self.pump(&machine, stream: stream, onAdmitted: onAdmitted)
        return (machine.result ?? .abandoned("the participation ended unfinished"), machine.memory)
      }
      memory = kept
      return result
    } catch let error as ParticipationChannelError {
      // The stream failed outside the conversation (the server could not be reached).
      var failed = machine
      _ = failed.failed(error)
      memory = failed.memory
      return failed.result ?? .abandoned("\(error)")
    } catch {
      return .abandoned("\(error)")
    }
  }

  /// Carries out the machine's actions and feeds it the server's messages until it ends. Runs on
  /// the stream's task; the actor is visited only for the device's own state.
  private nonisolated func pump(
    _ machine: inout DeviceConversation, stream: ParticipationStream, onAdmitted: (@Sendable () -> Void)?
  ) async {
    var actions = machine.start(now: Date().timeIntervalSince1970)
    while machine.result == nil || !actions.isEmpty {
      var following: [DeviceConversation.Action] = []
      for action in actions {
        switch action {
        case .send(let message):
          stream.send(message)
        case .train(let request):
          let answer = await train(request)
          following += machine.trainingEnded(answer, now: Date().timeIntervalSince1970)
        case .admitted:
          onAdmitted?()
        case .checkPeerCertificates(let peers, let count, let ownIndex):
          if let identity = configuration.identity {
            following += machine.peersChecked(
              await identity.identityKeys(peers: peers, count: count, ownIndex: ownIndex))
          } else {
            following += machine.peersChecked(.failure(.init(.missing, "this device has no signing key")))
          }
        case .drawSecrets(let signingKey):
          var seed = SecAggCrypto.randomSeed()
          var key = signingKey ? configuration.identity?.secretKey() ?? [] : []
          following += machine.secretsDrawn(seed: &seed, signingKey: &key)
        case .certificateRefused(let refusal):
          await refused(refusal)
        case .end:
          break
        }
      }
      actions = following
      if !actions.isEmpty || machine.result != nil { continue }
      if case .holding = machine.state, Task.isCancelled {
        actions = machine.cancelled()
        continue
      }
      do {
        if let message = try await stream.next() {
          actions = machine.received(message, now: Date().timeIntervalSince1970)
        } else {
          actions = machine.streamEnded(now: Date().timeIntervalSince1970)
        }
      } catch let error as ParticipationChannelError {
        actions = machine.failed(error)
      } catch {
        actions = machine.failed(.connection("\(error)"))
      }
    }
  }

  private func refused(_ certificate: DeviceCertificateRefusal) {
    refusedCertificates[certificate.reason, default: 0] += 1
  }

  /// Local training for the machine's `.train`: eligibility first, then the plan's built-in
  /// training on the device's examples.
  private func train(_ request: TrainingRequest) async -> DeviceConversation.TrainingAnswer {
    let training: LocalTraining
    do {
      training = try trainer(request)
    } catch {
      return .failed("\(error)")
    }
    let layout = training.layout
    guard layout.count == request.checkpoint.count else {
      return .unusable(
        reason: "malformed",
        detail: "the checkpoint has \(request.checkpoint.count) values, the plan's model \(layout.count)")
    }
    var controls: ControlVariates?
    if let server = request.serverControl {
      let own =
        control.flatMap { $0.count == layout.count ? $0 : nil } ?? [Float](repeating: 0, count: layout.count)
      controls = ControlVariates(
        server: Weights(layout: layout, values: server), device: Weights(layout: layout, values: own))
    }
    if let reason = ineligibility() { return .ineligible(reason) }
    let local: LocalExamples
    do {
      local = try examples()
    } catch {
      return .failed("\(error)")
    }
    let outcome = training.run(
      .init(
        device: configuration.device, round: request.round,
        start: Weights(layout: layout, values: request.checkpoint), evaluate: request.evaluate,
        controls: controls, clip: request.clip, codecSeed: request.codecSeed),
      train: local.train, indices: local.indices, test: local.test, seed: configuration.seed)
    // SCAFFOLD: the device keeps c_k⁺ once it has trained, as the simulator's devices do.
    if let c = outcome.control { control = c.values }
    return .trained(
      TrainingResult(
        update: outcome.update.values, encoded: outcome.encoded, examples: outcome.examples,
        loss: outcome.loss,
        evaluation: outcome.evaluation, lossAtGlobal: outcome.lossAtGlobal,
        controlDelta: outcome.controlDelta?.values, withinClip: outcome.withinClip))
  }

  private func trainer(_ request: TrainingRequest) throws -> LocalTraining {
    if let t = trainers[request.planJSON] { return t }
    let t = try LocalTraining(plan: request.plan)
    trainers = [request.planJSON: t]
    return t
  }

  /// Tests: an upload to resend, as if a stream had been lost during its report.
  func setPendingUpload(_ upload: PendingUpload?) { memory.pendingUpload = upload }
}

extension [DeviceSession.Action] {
  var sleepWindow: ClosedRange<Double>? {
    for action in self { if case .sleep(let window) = action { return window } }
    return nil
  }
}
