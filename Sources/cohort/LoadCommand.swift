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

      Serve a plan whose cohort is larger than all the load devices (Plans/load-test.yaml), so \
      every session waits for a task instead of starting a round:

        cohort serve --plan Plans/load-test.yaml --listen 127.0.0.1:7070 --tls-cert certs/server.pem \\
          --tls-key certs/server-key.pem --db load.sqlite &
        ulimit -n 65536
        cohort load --server 127.0.0.1:7070 --ca certs/ca.pem --devices 10000 --duration 20 \\
          --server-pid $!
      """)

  @Option(help: ArgumentHelp("The server to load.", valueName: "HOST:PORT"))
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

  @Option(help: "The server's process id, to measure its memory per idle session (same machine).")
  var serverPid: Int32?

  @Flag(help: "Print the report as JSON.")
  var json = false

  func validate() throws {
    if devices < 0 || rate <= 0 || duration < 0 {
      throw ValidationError("--devices must be ≥ 0, --rate > 0 and --duration ≥ 0")
    }
    _ = try HostPort(server, option: "--server")
  }

  func run() async throws {
    let address = try HostPort(server, option: "--server")
    let security = try tls.security()
    raiseOpenFileLimit()
    var logger = Logger(label: "cohort.load") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .warning
    let generator = LoadGenerator(
      configuration: .init(
        host: address.host, port: address.port, security: security, population: population, sessions: devices,
        checkInsPerSecond: rate, duration: duration, connections: connections),
      logger: logger)
    let report: LoadReport
    do throws(CohortError) {
      report = try await generator.run(serverPID: serverPid) { Console.error($0) }
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
