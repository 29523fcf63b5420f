import ArgumentParser
import CohortCore
import CohortOperations
import CohortTransport
import Foundation
import Logging

/// `cohort load`: many virtual devices against a running server.
struct LoadCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "load",
    abstract: "Hold thousands of device sessions against a running server and measure check-ins.",
    discussion: """
      Phase 1 opens --devices sessions, each a virtual device with the real client stack (the \
      device runtime over gRPC, HTTP/2 and TLS): it checks in, is admitted to the cohort being \
      gathered, and then holds its stream open and idle. Phase 2, while those sessions stay \
      open, makes --rate check-ins per second for --duration seconds, each on a new stream from \
      a new virtual device, and measures the time from opening the stream to the server's first \
      answer. It reports sessions held, check-ins per second, latency percentiles and errors, \
      and with --server-pid (a server on this machine) the server's memory per idle session.

      With several --server addresses (replicas of one federation, comma-separated), device i \
      and check-in i go to server i mod n, and the report adds each server's part; --server-pid \
      then takes one pid per server, in the same order.

      Serve a plan whose cohort is larger than all the load devices (Plans/load-test.yaml), so \
      every session waits for a task instead of starting a round:

        cohort serve --plan Plans/load-test.yaml --listen 127.0.0.1:7070 --tls-cert certs/server.pem \\
          --tls-key certs/server-key.pem --db load.sqlite &
        ulimit -n 65536
        cohort load --server 127.0.0.1:7070 --ca certs/ca.pem --devices 10000 --duration 20 \\
          --server-pid $!
      """)

  @Option(
    help: ArgumentHelp(
      "The server to load; several, comma-separated, for replicas of one federation (devices spread "
        + "over them in turn).", valueName: "HOST:PORT[,HOST:PORT…]"))
  var server: String

  @OptionGroup var tls: ClientTLSOptions

  @Option(help: "Sessions to open and hold.")
  var devices: Int = 1000

  @Option(help: "Seconds of check-ins while the sessions are held.")
  var duration: Double = 10

  @Option(help: "Check-ins per second during that time.")
  var rate: Double = 1000

  @Option(help: "HTTP/2 connections to spread the streams over (default: one per 1,000 sessions).")
  var connections: Int?

  @Option(help: "The population to join.")
  var population: String = "default"

  @Option(
    help: ArgumentHelp(
      "The server's process id, to measure its memory per idle session (same machine); with several "
        + "servers, one per server, comma-separated, in --server's order.", valueName: "PID[,PID…]"))
  var serverPid: String?

  @Flag(help: "Print the report as JSON.")
  var json = false

  func validate() throws {
    if devices < 0 || rate <= 0 || duration < 0 {
      throw ValidationError("--devices must be ≥ 0, --rate > 0 and --duration ≥ 0")
    }
    let addresses = try servers()
    let pids = try serverPIDs()
    if !pids.isEmpty, pids.count != addresses.count {
      throw ValidationError(
        "--server-pid gives \(pids.count) pids for \(addresses.count) servers: give one pid per "
          + "--server address, in the same order (e.g. --server-pid 4711,4712)")
    }
  }

  /// `--server`'s addresses, in order: one, or a comma-separated list.
  func servers() throws -> [HostPort] {
    let entries = server.split(separator: ",", omittingEmptySubsequences: false).map {
      $0.trimmingCharacters(in: .whitespaces)
    }
    // One address keeps the message it always had.
    if entries.count == 1 { return [try HostPort(server, option: "--server")] }
    var addresses: [HostPort] = []
    for (index, entry) in entries.enumerated() {
      guard !entry.isEmpty else {
        throw ValidationError(
          "--server \(server): entry \(index + 1) of \(entries.count) is empty; separate the servers with "
            + "single commas and no trailing comma (e.g. 127.0.0.1:7070,127.0.0.1:7071)")
      }
      guard let address = try? HostPort(entry, option: "--server") else {
        throw ValidationError(
          "--server \(server): entry \(index + 1), '\(entry)', is not HOST:PORT; write each server as "
            + "HOST:PORT, comma-separated (e.g. 127.0.0.1:7070,127.0.0.1:7071)")
      }
      if let earlier = addresses.firstIndex(where: { $0.host == address.host && $0.port == address.port }) {
        throw ValidationError(
          "--server \(server): entries \(earlier + 1) and \(index + 1) are the same server, '\(entry)'; "
            + "list each server once")
      }
      addresses.append(address)
    }
    return addresses
  }

  /// `--server-pid`'s pids, in order; none when it is not given.
  func serverPIDs() throws -> [Int32] {
    guard let serverPid else { return [] }
    let entries = serverPid.split(separator: ",", omittingEmptySubsequences: false).map {
      $0.trimmingCharacters(in: .whitespaces)
    }
    return try entries.enumerated().map { index, entry in
      guard let pid = Int32(entry), pid > 0 else {
        let which = entries.count == 1 ? "'\(entry)'" : "entry \(index + 1), '\(entry)',"
        throw ValidationError(
          "--server-pid \(serverPid): \(which) is not a process id; give the server's pid (e.g. $! after "
            + "starting it), or one per server, comma-separated (e.g. 4711,4712)")
      }
      return pid
    }
  }

  func run() async throws {
    let addresses = try servers()
    let pids = try serverPIDs()
    let security = try tls.security()
    raiseOpenFileLimit()
    var logger = Logger(label: "cohort.load") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .warning
    let generator = LoadGenerator(
      configuration: .init(
        servers: addresses.map { LoadServer(host: $0.host, port: $0.port) }, security: security,
        population: population, sessions: devices,
        checkInsPerSecond: rate, duration: duration, connections: connections),
      logger: logger)
    let report: LoadReport
    do throws(CohortError) {
      report = try await generator.run(serverPIDs: pids) { Console.error($0) }
    } catch {
      throw error.exit()
    }
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try encoder.encode(report), as: UTF8.self))
      return
    }
    func ms(_ s: Double) -> String { String(format: "%.1f ms", s * 1000) }
    print("sessions held      \(report.sessionsHeld) of \(report.sessionsRequested)")
    print("opened in          \(String(format: "%.1f", report.secondsToOpenSessions)) s")
    print("check-ins          \(report.checkIns) (\(report.checkInErrors) failed)")
    print("check-ins/s        \(String(format: "%.0f", report.checkInsPerSecond))")
    print("latency p50        \(ms(report.latencyP50))")
    print("latency p90        \(ms(report.latencyP90))")
    print("latency p99        \(ms(report.latencyP99))")
    print("latency max        \(ms(report.latencyMax))")
    if let perSession = report.bytesPerIdleSession {
      print("server memory      \(String(format: "%.1f", perSession / 1024)) KiB per idle session")
    }
    for (kind, count) in report.errors.sorted(by: { $0.key < $1.key }) {
      print("error              \(kind): \(count)")
    }
    guard let parts = report.servers else { return }
    // Each server's part; the lines above are the totals.
    let width = max(6, parts.map(\.server.count).max() ?? 0)
    func pad(_ text: String, _ n: Int) -> String {
      text + String(repeating: " ", count: max(0, n - text.count))
    }
    func right(_ text: String, _ n: Int) -> String {
      String(repeating: " ", count: max(0, n - text.count)) + text
    }
    print("")
    print(
      pad("server", width) + right("held", 9) + right("of", 8) + right("check-ins", 11) + right("failed", 8)
        + right("p50", 10) + right("p99", 10) + right("KiB/session", 13))
    for part in parts {
      let memory = part.bytesPerIdleSession.map { String(format: "%.1f", $0 / 1024) } ?? "-"
      print(
        pad(part.server, width) + right("\(part.sessionsHeld)", 9) + right("\(part.sessionsRequested)", 8)
          + right("\(part.checkIns)", 11) + right("\(part.checkInErrors)", 8) + right(ms(part.latencyP50), 10)
          + right(ms(part.latencyP99), 10) + right(memory, 13))
      for (kind, count) in part.errors.sorted(by: { $0.key < $1.key }) {
        print(pad("", width) + "  error \(kind): \(count)")
      }
    }
  }
}

/// Raises the open-file soft limit to the hard limit (every device session holds a socket or a
/// stream; thousands need it) and returns the limit in force.
@discardableResult
func raiseOpenFileLimit() -> Int {
  var limit = rlimit()
  guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
  if limit.rlim_cur < limit.rlim_max {
    var raised = limit
    raised.rlim_cur = limit.rlim_max
    if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
  }
  return Int(clamping: limit.rlim_cur)
}
