import CohortCore
import CohortProtocol
import Foundation
import GRPCCore
import Logging
import Metrics
import Synchronization

/// The `cohort.v1.Federation` service: each participation stream is a `ServerParticipation`
/// fed with the stream's messages and its mailbox's events, whose actions this carries out on
/// the handler, the secure-aggregation driver and the stream.
struct FederationService: Cohort_V1_Federation.SimpleServiceProtocol {
  /// The server behind the wire: the protocol machines, reached only through this interface.
  let handler: any FederationHandler
  let secureAggregation: NetworkSecureAggregation?
  /// Active secure aggregation: what device certificates are checked against at check-in (the
  /// mutual-TLS client CA, or only their form without one); nil for other plans.
  let certificates: DeviceCertificateVerifier?
  /// What every participation works with; its layout is the handler's model's, read once.
  let participation: ServerParticipation.Configuration
  let limits: TransportLimits
  let clock: any RoundClock
  let metrics: TransportMetrics
  let logger: Logger
  /// Streams in progress, ended together at shutdown.
  let open = OpenParticipations()
  /// The devices the connections' certificates name (mutual TLS), by remote peer.
  let connections: ConnectionBook?
  /// Seconds a stream may make no progress where the device has the next move.
  let streamInactivity: Double
  /// Where the streams' timers run.
  let deadlines = StreamDeadlines()
  /// The model's layout, which does not change during a run: read from the handler once.
  private let layout = LayoutCache()

  init(
    handler: any FederationHandler, secureAggregation: NetworkSecureAggregation?,
    certificates: DeviceCertificateVerifier?, participation: ServerParticipation.Configuration,
    limits: TransportLimits, clock: any RoundClock, metrics: TransportMetrics, logger: Logger,
    connections: ConnectionBook? = nil, streamInactivity: Double = 60
  ) {
    self.connections = connections
    self.streamInactivity = streamInactivity
    self.handler = handler
    self.secureAggregation = secureAggregation
    self.certificates = certificates
    self.participation = participation
    self.limits = limits
    self.clock = clock
    self.metrics = metrics
    self.logger = logger
  }

  func participate(
    request: RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>,
    response: RPCWriter<Cohort_V1_ServerMessage>, context: ServerContext
  ) async throws {
    metrics.streams.increment()
    metrics.connected.increment()
    defer { metrics.connected.decrement() }
    var configuration = participation
    configuration.layout = await layout.get(handler)
    configuration.certifiedDevice = connections?.device(peer: context.remotePeer)
    let watchdog = StreamWatchdog(deadlines: deadlines)
    let machine = ServerParticipation(configuration: configuration)
    try await withThrowingTaskGroup(of: StreamEnding.self) { group in
      group.addTask {
        defer { watchdog.stop() }
        var pump = Pump(service: self, response: response, machine: machine, watchdog: watchdog)
        open.add(pump.mailbox)
        defer { open.remove(pump.mailbox) }
        try await pump.run(request)
        return .pumped
      }
      group.addTask {
        // gRPC says an RPC is over (the device reset its stream, or its connection closed) only
        // through this handle, not by cancelling the handler: without it a stream waiting for
        // its task would be held, with its device in the cohort, after its device is gone.
        try? await context.cancellation.cancelled
        return .cancelled
      }
      group.addTask {
        guard await watchdog.expired() else { return .watchdogStopped }
        metrics.inactive.increment()
        throw RPCError(
          code: .deadlineExceeded,
          message:
            "inactive: the device made no progress for \(Int(streamInactivity)) s; the stream is closed")
      }
      // The pump's ending is the stream's (its refusal is the status the device sees). The RPC's
      // cancellation or the watchdog end the pump; the watchdog stopping only says the pump is
      // ending, so its outcome is still awaited (it must not end the stream as OK first).
      do {
        while let ending = try await group.next() {
          switch ending {
          case .pumped:
            group.cancelAll()
            return
          case .cancelled: group.cancelAll()
          case .watchdogStopped: continue
          }
        }
      } catch {
        group.cancelAll()
        throw error
      }
    }
  }
}

/// Which of a stream's three tasks ended first.
private enum StreamEnding: Sendable {
  /// The participation is over (its refusal, if any, was thrown instead).
  case pumped
  /// gRPC cancelled the RPC (or the group did).
  case cancelled
  /// The watchdog was stopped: the pump is ending.
  case watchdogStopped
}

private final class LayoutCache: Sendable {
  private let layout = Mutex<WeightsLayout?>(nil)

  func get(_ handler: any FederationHandler) async -> WeightsLayout {
    if let known = layout.withLock({ $0 }) { return known }
    let read = await handler.modelLayout
    layout.withLock { $0 = read }
    return read
  }
}

/// One participation stream: reads what the machine waits for, feeds it, carries out its actions.
private struct Pump {
  let service: FederationService
  let response: RPCWriter<Cohort_V1_ServerMessage>
  let mailbox: DeviceMailbox
  /// The one reader of the mailbox, kept for the whole participation.
  var events: AsyncStream<SessionEvent>.AsyncIterator
  var machine: ServerParticipation
  /// The certificate the device presented at check-in, once verified (active secure aggregation).
  var certificate: VerifiedDeviceCertificate?
  var timer: UInt64?
  /// The device opened a newer stream, whose link replaced this one's.
  var superseded = false
  let watchdog: StreamWatchdog
  /// The reporting deadline of the task sent (server time): the device trains until then.
  var reportingDeadline: Double?
  /// The first failed write: the stream is gone, and nothing more is sent.
  var writeError: (any Error)?
  var refusal: ServerParticipation.Refusal?

  init(
    service: FederationService, response: RPCWriter<Cohort_V1_ServerMessage>, machine: ServerParticipation,
    watchdog: StreamWatchdog
  ) {
    self.watchdog = watchdog
    mailbox = DeviceMailbox(deadlines: service.deadlines)
    self.service = service
    self.response = response
    self.machine = machine
    events = mailbox.events.makeAsyncIterator()
  }

  mutating func run(_ request: RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>) async throws {
    defer { mailbox.close() }
    var messages = request.makeAsyncIterator()
    do {
      while machine.awaiting != .nothing {
        let event = try await next(&messages)
        await perform(machine.handle(event, now: service.clock.now))
      }
    } catch {
      await perform(machine.handle(.streamEnded, now: service.clock.now))
      throw error
    }
    if let refusal {
      // The Coordinator counts the reports it refuses itself; count only the transport's own.
      if !refusal.counted { service.metrics.refused(refusal.name) }
      service.logger.debug(
        "participation refused",
        metadata: ["device": "\(machine.device.map(String.init) ?? "?")", "reason": "\(refusal)"])
      let code: RPCError.Code =
        switch refusal.reason {
        case .rejected(let rejection): rejection.statusCode
        case .unauthenticated: .unauthenticated
        }
      throw ParticipationRefusal(refusal.name, refusal.detail, code: code).rpcError
    }
    if let writeError { throw writeError }
  }

  /// The next event of whatever the machine waits for.
  mutating func next(_ messages: inout RPCAsyncSequence<Cohort_V1_DeviceMessage, any Error>.AsyncIterator)
    async throws -> ServerParticipation.Event
  {
    switch machine.awaiting {
    case .deviceMessage:
      // The device has the next move: while it trains, until its reporting deadline; otherwise
      // within the inactivity bound.
      var wait = service.streamInactivity
      if case .awaitingReport = machine.state, let deadline = reportingDeadline {
        wait += max(0, deadline - service.clock.now)
      }
      watchdog.arm(seconds: wait)
      defer { watchdog.disarm() }
      guard let message = try await messages.next() else { return .streamEnded }
      service.metrics.bytesReceived.increment(by: message.payloadBytes)
      if case .abandon(let abandon) = message.kind {
        service.logger.debug(
          "device abandoned its participation",
          metadata: [
            "device": "\(machine.device ?? -1)", "round": "\(abandon.round)", "reason": "\(abandon.reason)",
          ])
      }
      return .received(DeviceMessage(wire: message), version: Int(message.protocolVersion))
    case .serverEvent:
      switch await events.next() {
      case .task(let assignment):
        reportingDeadline = assignment.task.reportingDeadline
        return .task(assignment)
      case .released(let window): return .released(window: window)
      case .secAggBegin(let begin): return .secureAggregationBegin(begin)
      case .secAggRequest(let bytes): return .secureAggregationRequest(bytes)
      case .secAggFinished(let accepted, let reason):
        return .secureAggregationFinished(accepted: accepted, reason: reason)
      case .timeout: return .taskWaitExpired
      case .reportAnswered(let reply): return .reportAnswered(reply)
      // The mailbox closed: the server is shutting down, or this stream's task was cancelled.
      case nil: return .shutdown
      }
    case .answer, .nothing:
      // Answers are fed as their actions are carried out; this is not reached.
      return .streamEnded
    }
  }

  mutating func perform(_ actions: [ServerParticipation.Action]) async {
    var queue = actions[...]
    while let action = queue.popFirst() {
      var answer: ServerParticipation.Event?
      switch action {
      case .send(let message):
        guard writeError == nil else { continue }
        let wire = message.wire
        service.metrics.bytesSent.increment(by: wire.payloadBytes)
        // A device that does not read what it is sent holds the stream no longer than this.
        watchdog.arm(seconds: service.streamInactivity)
        defer { watchdog.disarm() }
        do {
          try await response.write(wire)
        } catch {
          writeError = error
          answer = .streamEnded
        }
      case .verifyCertificate(let der, let device):
        let result =
          await service.certificates?.verify(der: der, device: device)
          ?? .failure(DeviceCertificateRefusal(.untrusted, "this server checks no certificates"))
        switch result {
        case .success(let verified):
          certificate = verified
          answer = .certificateAccepted
        case .failure(let refusal):
          answer = .certificateRefused(reason: refusal.reason.rawValue, detail: refusal.detail)
        }
      case .connect(let device): await service.handler.connect(device, link: mailbox)
      case .checkIn(let checkIn): answer = .checkInAnswered(await service.handler.checkIn(checkIn))
      case .startTaskWaitTimer(let seconds): timer = mailbox.startTimer(seconds: seconds)
      case .cancelTaskWaitTimer:
        if let timer { mailbox.cancelTimer(timer) }
        timer = nil
      case .submit(let report): answer = .reportAnswered(await service.handler.report(report))
      case .submitWhileRelaying(let report):
        let (handler, mailbox) = (service.handler, mailbox)
        Task { mailbox.post(.reportAnswered(await handler.report(report))) }
      case .enrol(let round, let device, let examples):
        await service.secureAggregation?.enrol(
          round: round, device: device, examples: examples, mailbox: mailbox, certificate: certificate)
      case .relay(let round, let device, let message):
        await service.secureAggregation?.receive(round: round, device: device, bytes: message)
      case .leave(let round, let device): await service.secureAggregation?.leave(round: round, device: device)
      case .disconnect(let device): superseded = !(await service.handler.disconnect(device, link: mailbox))
      case .dropped(let device, let round, let hadTask):
        // A device that reconnected while waiting to be chosen waits in its new stream; one that
        // had its task lost it with this stream (the task went to this stream alone).
        if hadTask || !superseded { await service.handler.dropped(device: device, round: round) }
      case .end(let refusal): self.refusal = refusal
      }
      if let answer { queue += machine.handle(answer, now: service.clock.now) }
    }
  }
}
