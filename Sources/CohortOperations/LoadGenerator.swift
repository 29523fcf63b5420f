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
  /// The servers to load, replicas of one federation: device i (sessions and check-ins alike)
  /// goes to server i mod n, and so do the connections.
  public var servers: [LoadServer]
  /// The first server's host (the only one, for a single server).
  public var host: String {
    get { servers[0].host }
    set { servers[0].host = newValue }
  }
  public var port: Int {
    get { servers[0].port }
    set { servers[0].port = newValue }
  }
  public var security: ClientSecurity
  public var population: String
  /// Sessions to open and hold idle (checked in, admitted, waiting for a task).
  public var sessions: Int
  /// Check-ins per second to make, each on a new stream, while the sessions are held.
  public var checkInsPerSecond: Double
  /// Seconds of check-ins.
  public var duration: Double
  /// HTTP/2 connections the streams are spread over (at least one per server).
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
    self.init(
      servers: [LoadServer(host: host, port: port)], security: security, population: population,
      sessions: sessions, checkInsPerSecond: checkInsPerSecond, duration: duration, connections: connections,
      firstDevice: firstDevice, openingConcurrency: openingConcurrency)
  }

  /// - Parameter servers: one or more; an empty list is taken as a programming error.
  public init(
    servers: [LoadServer], security: ClientSecurity, population: String = "default", sessions: Int,
    checkInsPerSecond: Double = 1000, duration: Double = 10, connections: Int? = nil,
    firstDevice: Int = 1_000_000,
    openingConcurrency: Int = 256
  ) {
    precondition(!servers.isEmpty, "a load needs at least one server")
    self.servers = servers
    self.security = security
    self.population = population
    self.sessions = sessions
    self.checkInsPerSecond = checkInsPerSecond
    self.duration = duration
    // HTTP/2 servers cap concurrent streams per connection (gRPC's default is 4096).
    // Every server gets at least one connection.
    self.connections = max(servers.count, connections ?? max(1, (sessions + 999) / 1000))
    self.firstDevice = firstDevice
    self.openingConcurrency = openingConcurrency
  }
}

/// One server of a load.
public struct LoadServer: Sendable, Hashable {
  public var host: String
  public var port: Int

  public init(host: String, port: Int) {
    self.host = host
    self.port = port
  }

  /// `HOST:PORT`, as the command line names it.
  public var name: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// What a load run measured at one server of several.
public struct LoadServerReport: Sendable, Codable, Equatable {
  /// `HOST:PORT`.
  public var server: String
  public var sessionsRequested: Int
  public var sessionsHeld: Int
  /// Check-ins answered, and those made that were not.
  public var checkIns: Int
  public var checkInErrors: Int
  public var latencyP50: Double
  public var latencyP99: Double
  public var latencyMax: Double
  public var errors: [String: Int]
  /// This server's resident memory before and after opening the sessions, when its pid was given.
  public var serverResidentBytesBefore: Int?
  public var serverResidentBytesHeld: Int?

  /// This server's memory per session it holds, from its resident-set growth.
  public var bytesPerIdleSession: Double? {
    perSession(before: serverResidentBytesBefore, held: serverResidentBytesHeld, sessions: sessionsHeld)
  }
}

private func perSession(before: Int?, held: Int?, sessions: Int) -> Double? {
  guard let before, let held, sessions > 0 else { return nil }
  return Double(held - before) / Double(sessions)
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
  /// The server's resident memory before and after opening the sessions, when its pid was given
  /// (with several servers, the sum over all of them, when every pid was given).
  public var serverResidentBytesBefore: Int?
  public var serverResidentBytesHeld: Int?
  /// With several servers, each one's part (the totals above are over all of them); nil for one
  /// server, whose report is the totals alone, as before replicas.
  public var servers: [LoadServerReport]?

  /// Server memory per held session, from the resident-set growth (over all servers).
  public var bytesPerIdleSession: Double? {
    perSession(before: serverResidentBytesBefore, held: serverResidentBytesHeld, sessions: sessionsHeld)
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
    try await run(serverPIDs: serverPID.map { [$0] } ?? [], progress: progress)
  }

  /// - Parameters:
  ///   - serverPIDs: the servers' processes, in the order of `configuration.servers`, to read
  ///     their memory (same machine only); empty for none.
  ///   - progress: a line of progress now and then.
  public func run(serverPIDs: [Int32], progress: @escaping @Sendable (String) -> Void = { _ in })
    async throws(CohortError) -> LoadReport
  {
    let c = configuration
    let n = c.servers.count
    guard n > 0 else {
      throw CohortError(.invalidConfiguration, "a load without a server", fix: "give at least one server")
    }
    guard serverPIDs.isEmpty || serverPIDs.count == n else {
      throw CohortError(
        .invalidConfiguration, "\(serverPIDs.count) server pids for \(n) servers",
        fix: "give one pid per server, in the servers' order")
    }
    // Connection j goes to server j mod n; `pools[s]` are server s's.
    var pools: [[FederationConnection]] = Array(repeating: [], count: n)
    defer { for connection in pools.joined() { connection.close() } }
    for j in 0..<c.connections {
      let server = c.servers[j % n]
      pools[j % n].append(
        try FederationConnection(host: server.host, port: server.port, security: c.security))
    }
    let sessionPools = pools
    let logger = self.logger
    // Device i (counted from `firstDevice`) goes to server i mod n, and to that server's
    // connections in turn; with one server, device i to connection i mod connections.
    let runtimeFor: @Sendable (Int) -> DeviceRuntime = { i in
      let pool = sessionPools[i % n]
      let device = c.firstDevice + i
      return DeviceRuntime(
        configuration: .init(device: device, population: c.population, seed: UInt64(device)),
        connection: pool[(device / n) % pool.count],
        examples: { throw CohortError(.invalidData, "load devices only check in") }, logger: logger)
    }
    let memory = { @Sendable () -> [Int?] in serverPIDs.map { residentBytes(pid: $0) } }
    let before = memory()
    let tally = LoadTally(servers: n)
    let record = { @Sendable (server: Int, result: ParticipationResult) in
      switch result {
      case .admitted, .retry: return
      case .refused(let reason, _): tally.error(reason, server: server)
      case .abandoned(let why): tally.error(String(why.prefix(60)), server: server)
      case .finished: tally.error("unexpected task", server: server)
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
        let runtime = runtimeFor(i)
        holders.addTask {
          let result = await runtime.holdSession {
            tally.state.withLock { $0[i % n].held += 1 }
            admitted.yield()
          }
          if case .admitted = result { return }
          record(i % n, result)
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
      let sessionsHeld = tally.state.withLock { $0.reduce(0) { $0 + $1.held } }
      progress("holding \(sessionsHeld) sessions (opened in \(String(format: "%.1f", openingSeconds)) s)")
      let heldMemory = memory()

      // Phase 2: check-ins at a steady rate on new streams while the sessions stay open.
      let total = Int((c.checkInsPerSecond * c.duration).rounded())
      // Each check-in here ends its stream as soon as the server answers, which HTTP/2 does with
      // a reset; servers close a connection that resets too many streams in a short time
      // (SwiftNIO's flood protection), so these check-ins are spread over fresh connections,
      // at most `checkInsPerConnection` each. Check-in k goes to server k mod n.
      var checkInPools: [[FederationConnection]] = Array(repeating: [], count: n)
      for s in 0..<n {
        let made = total / n + (s < total % n ? 1 : 0)
        for _ in 0..<max(1, (made + Self.checkInsPerConnection - 1) / Self.checkInsPerConnection) {
          let server = c.servers[s]
          if let connection = try? FederationConnection(
            host: server.host, port: server.port, security: c.security)
          {
            checkInPools[s].append(connection)
          }
        }
      }
      let checkInConnections = (0..<n).map { checkInPools[$0].isEmpty ? sessionPools[$0] : checkInPools[$0] }
      defer { for connection in checkInPools.joined() { connection.close() } }
      let start = clock.now
      await withTaskGroup(of: Void.self) { checkIns in
        for i in 0..<total {
          let due = start + .seconds(Double(i) / c.checkInsPerSecond)
          if due > clock.now { try? await clock.sleep(until: due) }
          let device = c.firstDevice + c.sessions + i
          let server = i % n
          let pool = checkInConnections[server]
          let runtime = DeviceRuntime(
            configuration: .init(device: device, population: c.population, seed: UInt64(device)),
            connection: pool[i / n / Self.checkInsPerConnection % pool.count],
            examples: { throw CohortError(.invalidData, "load devices only check in") }, logger: logger)
          checkIns.addTask {
            let begun = clock.now
            let result = await runtime.checkInOnly()
            let latency = seconds(clock.now - begun)
            switch result {
            case .admitted, .retry: tally.state.withLock { $0[server].latencies.append(latency) }
            default: record(server, result)
            }
          }
          if (i + 1) % max(1, Int(c.checkInsPerSecond)) == 0 { progress("\(i + 1) of \(total) check-ins") }
        }
      }
      let elapsed = seconds(clock.now - start)
      holders.cancelAll()
      let parts = tally.state.withLock { $0 }
      let sorted = parts.flatMap(\.latencies).sorted()
      var failures: [String: Int] = [:]
      for part in parts { failures.merge(part.errors, uniquingKeysWith: +) }
      let servers = (0..<n).map { s -> LoadServerReport in
        let latencies = parts[s].latencies.sorted()
        let made = total / n + (s < total % n ? 1 : 0)
        return LoadServerReport(
          server: c.servers[s].name, sessionsRequested: c.sessions / n + (s < c.sessions % n ? 1 : 0),
          sessionsHeld: parts[s].held, checkIns: latencies.count, checkInErrors: made - latencies.count,
          latencyP50: percentile(latencies, 0.5), latencyP99: percentile(latencies, 0.99),
          latencyMax: latencies.last ?? 0, errors: parts[s].errors,
          serverResidentBytesBefore: before.isEmpty ? nil : before[s],
          serverResidentBytesHeld: heldMemory.isEmpty ? nil : heldMemory[s])
      }
      // Memory in total only when every server's was read.
      func sum(_ values: [Int?]) -> Int? {
        values.isEmpty || values.contains(nil) ? nil : values.reduce(0) { $0 + $1! }
      }
      return LoadReport(
        sessionsRequested: c.sessions, sessionsHeld: sessionsHeld, secondsToOpenSessions: openingSeconds,
        checkIns: sorted.count, checkInErrors: total - sorted.count,
        checkInsPerSecond: elapsed > 0 ? Double(sorted.count) / elapsed : 0,
        latencyP50: percentile(sorted, 0.5),
        latencyP90: percentile(sorted, 0.9), latencyP99: percentile(sorted, 0.99),
        latencyMax: sorted.last ?? 0,
        errors: failures, serverResidentBytesBefore: sum(before), serverResidentBytesHeld: sum(heldMemory),
        servers: n > 1 ? servers : nil)
    }
  }
}

/// The `p` quantile of ascending `sorted` (nearest rank), 0 when empty.
private func percentile(_ sorted: [Double], _ p: Double) -> Double {
  sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
}

private func seconds(_ d: Duration) -> Double {
  Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

/// What the load's tasks count per server, shared between them.
private final class LoadTally: Sendable {
  let state: Mutex<[(held: Int, latencies: [Double], errors: [String: Int])]>

  init(servers: Int) {
    state = Mutex(Array(repeating: (0, [], [:]), count: servers))
  }

  func error(_ kind: String, server: Int) {
    state.withLock { $0[server].errors[kind, default: 0] += 1 }
  }
}
