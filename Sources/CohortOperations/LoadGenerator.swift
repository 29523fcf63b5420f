public import CohortCore
import CohortDevice
import CohortProtocol
public import CohortTransport
import Foundation
public import Logging
import Synchronization

/// What `cohort load` does: many virtual devices, each a `DeviceRuntime` over the real client
/// stack (gRPC over HTTP/2 with TLS), against a running server.
public struct LoadConfiguration: Sendable {
  public var host: String
  public var port: Int
  public var security: ClientSecurity
  public var population: String
  /// Sessions to open and hold idle (checked in, admitted, waiting for a task).
  public var sessions: Int
  /// Check-ins per second to make, each on a new stream, while the sessions are held.
  public var checkInsPerSecond: Double
  /// Seconds of check-ins.
  public var duration: Double
  /// HTTP/2 connections the streams are spread over.
  public var connections: Int
  /// The first virtual device number (later ones follow), so load devices do not collide with real ones.
  public var firstDevice: Int
  /// Sessions being opened at once.
  public var openingConcurrency: Int

  public init(
    host: String, port: Int, security: ClientSecurity, population: String = "default", sessions: Int,
    checkInsPerSecond: Double = 1000, duration: Double = 10, connections: Int? = nil,
    firstDevice: Int = 1_000_000,
    openingConcurrency: Int = 256
  ) {
    self.host = host
    self.port = port
    self.security = security
    self.population = population
    self.sessions = sessions
    self.checkInsPerSecond = checkInsPerSecond
    self.duration = duration
    // HTTP/2 servers cap concurrent streams per connection (gRPC's default is 4096).
    self.connections = connections ?? max(1, (sessions + 999) / 1000)
    self.firstDevice = firstDevice
    self.openingConcurrency = openingConcurrency
  }
}

/// What a load run measured.
public struct LoadReport: Sendable, Codable {
  public var sessionsRequested: Int
  public var sessionsHeld: Int
  public var secondsToOpenSessions: Double
  public var checkIns: Int
  public var checkInErrors: Int
  public var checkInsPerSecond: Double
  /// Check-in latency (stream opened to the server's first answer), in seconds.
  public var latencyP50: Double
  public var latencyP90: Double
  public var latencyP99: Double
  public var latencyMax: Double
  /// Errors by kind (refusal reason or connection error).
  public var errors: [String: Int]
  /// The server's resident memory before and after opening the sessions, when its pid was given.
  public var serverResidentBytesBefore: Int?
  public var serverResidentBytesHeld: Int?

  /// Server memory per held session, from the resident-set growth.
  public var bytesPerIdleSession: Double? {
    guard let before = serverResidentBytesBefore, let held = serverResidentBytesHeld, sessionsHeld > 0 else {
      return nil
    }
    return Double(held - before) / Double(sessionsHeld)
  }
}

/// The resident memory of a process from /proc/PID/status (VmRSS), in bytes.
public func residentBytes(pid: Int32) -> Int? {
  guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
  for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
    let fields = line.split(separator: " ", omittingEmptySubsequences: true)
    if fields.count >= 2, let kB = Int(fields[1]) { return kB * 1024 }
  }
  return nil
}

/// Drives a load run: opens and holds `sessions` idle sessions, then makes check-ins at the
/// asked rate on new streams, measuring each one's latency, and closes everything.
public struct LoadGenerator: Sendable {
  /// Check-ins per connection in the measured phase (below the servers' reset-flood limits).
  static let checkInsPerConnection = 150
  public let configuration: LoadConfiguration
  let logger: Logger

  public init(configuration: LoadConfiguration, logger: Logger) {
    self.configuration = configuration
    self.logger = logger
  }

  /// - Parameters:
  ///   - serverPID: the server's process, to read its memory (same machine only).
  ///   - progress: a line of progress now and then.
  public func run(serverPID: Int32? = nil, progress: @escaping @Sendable (String) -> Void = { _ in })
    async throws(CohortError) -> LoadReport
  {
    let c = configuration
    var connections: [FederationConnection] = []
    for _ in 0..<c.connections {
      connections.append(try FederationConnection(host: c.host, port: c.port, security: c.security))
    }
    let pool = connections
    defer { for connection in pool { connection.close() } }
    let logger = self.logger
    let runtimeFor: @Sendable (Int) -> DeviceRuntime = { device in
      DeviceRuntime(
        configuration: .init(device: device, population: c.population, seed: UInt64(device)),
        connection: pool[device % pool.count],
        examples: { throw CohortError(.invalidData, "load devices only check in") }, logger: logger)
    }
    let before = serverPID.flatMap(residentBytes(pid:))
    let tally = LoadTally()
    let record = { @Sendable (result: ParticipationResult) in
      switch result {
      case .admitted, .retry: return
      case .refused(let reason, _): tally.error(reason)
      case .abandoned(let why): tally.error(String(why.prefix(60)))
      case .finished: tally.error("unexpected task")
      }
    }
    let clock = ContinuousClock()
    let openingStart = clock.now
    let (admissions, admitted) = AsyncStream.makeStream(of: Void.self)
    return await withTaskGroup(of: Void.self) { holders -> LoadReport in
      // Phase 1: open the sessions, a bounded number at a time, and keep them open.
      var opened = 0
      var waiting = 0
      var iterator = admissions.makeAsyncIterator()
      for i in 0..<c.sessions {
        let runtime = runtimeFor(c.firstDevice + i)
        holders.addTask {
          let result = await runtime.holdSession {
            tally.state.withLock { $0.held += 1 }
            admitted.yield()
          }
          if case .admitted = result { return }
          record(result)
          admitted.yield()
        }
        opened += 1
        waiting += 1
        if waiting >= c.openingConcurrency {
          _ = await iterator.next()
          waiting -= 1
        }
        if opened % 1000 == 0 { progress("opened \(opened) of \(c.sessions) sessions") }
      }
      while waiting > 0 {
        _ = await iterator.next()
        waiting -= 1
      }
      let openingSeconds = seconds(clock.now - openingStart)
      let sessionsHeld = tally.state.withLock { $0.held }
      progress("holding \(sessionsHeld) sessions (opened in \(String(format: "%.1f", openingSeconds)) s)")
      let heldMemory = serverPID.flatMap(residentBytes(pid:))

      // Phase 2: check-ins at a steady rate on new streams while the sessions stay open.
      let total = Int((c.checkInsPerSecond * c.duration).rounded())
      // Each check-in here ends its stream as soon as the server answers, which HTTP/2 does with
      // a reset; servers close a connection that resets too many streams in a short time
      // (SwiftNIO's flood protection), so these check-ins are spread over fresh connections,
      // at most `checkInsPerConnection` each.
      var checkInPool: [FederationConnection] = []
      for _ in 0..<max(1, (total + Self.checkInsPerConnection - 1) / Self.checkInsPerConnection) {
        if let connection = try? FederationConnection(host: c.host, port: c.port, security: c.security) {
          checkInPool.append(connection)
        }
      }
      let checkInConnections = checkInPool.isEmpty ? pool : checkInPool
      defer { for connection in checkInPool { connection.close() } }
      let start = clock.now
      await withTaskGroup(of: Void.self) { checkIns in
        for i in 0..<total {
          let due = start + .seconds(Double(i) / c.checkInsPerSecond)
          if due > clock.now { try? await clock.sleep(until: due) }
          let device = c.firstDevice + c.sessions + i
          let runtime = DeviceRuntime(
            configuration: .init(device: device, population: c.population, seed: UInt64(device)),
            connection: checkInConnections[i / Self.checkInsPerConnection % checkInConnections.count],
            examples: { throw CohortError(.invalidData, "load devices only check in") }, logger: logger)
          checkIns.addTask {
            let begun = clock.now
            let result = await runtime.checkInOnly()
            let latency = seconds(clock.now - begun)
            switch result {
            case .admitted, .retry: tally.state.withLock { $0.latencies.append(latency) }
            default: record(result)
            }
          }
          if (i + 1) % max(1, Int(c.checkInsPerSecond)) == 0 { progress("\(i + 1) of \(total) check-ins") }
        }
      }
      let elapsed = seconds(clock.now - start)
      holders.cancelAll()
      let sorted = tally.state.withLock { $0.latencies.sorted() }
      func percentile(_ p: Double) -> Double {
        sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
      }
      let failures = tally.state.withLock { $0.errors }
      return LoadReport(
        sessionsRequested: c.sessions, sessionsHeld: sessionsHeld, secondsToOpenSessions: openingSeconds,
        checkIns: sorted.count, checkInErrors: total - sorted.count,
        checkInsPerSecond: elapsed > 0 ? Double(sorted.count) / elapsed : 0, latencyP50: percentile(0.5),
        latencyP90: percentile(0.9), latencyP99: percentile(0.99), latencyMax: sorted.last ?? 0,
        errors: failures, serverResidentBytesBefore: before, serverResidentBytesHeld: heldMemory)
    }
  }
}

private func seconds(_ d: Duration) -> Double {
  Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

/// What the load's tasks count, shared between them.
private final class LoadTally: Sendable {
  let state = Mutex<(held: Int, latencies: [Double], errors: [String: Int])>((0, [], [:]))

  func error(_ kind: String) {
    state.withLock { $0.errors[kind, default: 0] += 1 }
  }
}
