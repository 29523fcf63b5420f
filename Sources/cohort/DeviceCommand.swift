import ArgumentParser
import CohortCore
import CohortDevice
import CohortProtocol
import CohortStore
import CohortTransport
import Foundation
import Logging

/// `cohort device`: the Linux client runtime, and its examples store.
struct DeviceCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "device",
    abstract: "Run a device: train on local examples for a Cohort server, over TLS.",
    subcommands: [DeviceRunCommand.self, DeviceImportCommand.self],
    defaultSubcommand: DeviceRunCommand.self)
}

struct DeviceRunCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run",
    abstract: "Check in with a server, train when selected, report, and come back when told.",
    discussion: """
      The device trains only on its own examples store (fill it with `cohort device import`) \
      and only with Cohort's built-in training: the server's plan parameterizes the model and \
      the optimizer, it never names a command to run. Its identity (a device number) and \
      secret seed live in the examples store; --id sets the number once.

      The device checks in, waits for its round's task if admitted, downloads the checkpoint \
      (verified by SHA-256), trains, uploads its update (or runs secure aggregation), and then \
      comes back when the server's pace steering says. After a refusal or a lost connection it \
      backs off exponentially with jitter. --hours and --max-load restrict when it works.

      A plan with `secure_aggregation.variant: active` needs --signing-key: the device's Ed25519 \
      key (device-<n>-signing.key from `cohort certs create`), whose public half its --cert \
      carries. The device sends its certificate at check-in and checks every peer's certificate \
      against --ca before it trusts a signature, so the server cannot substitute a key.

        cohort device --server 127.0.0.1:7070 --ca certs/ca.pem \\
          --cert certs/device-1.pem --key certs/device-1-key.pem --examples device-1.sqlite \\
          --signing-key certs/device-1-signing.key
      """)

  @Option(
    help: ArgumentHelp(
      "The server to join; several, comma-separated, for replicas of one federation: the device "
        + "moves to the next when a server cannot be reached.",
      valueName: "HOST:PORT[,HOST:PORT…]"))
  var server: String

  /// `--server`'s addresses, in order.
  func servers() throws -> [HostPort] {
    try server.split(separator: ",", omittingEmptySubsequences: false).map {
      try HostPort($0.trimmingCharacters(in: .whitespaces), option: "--server")
    }
  }

  @OptionGroup var tls: ClientTLSOptions

  @Option(help: ArgumentHelp("The device's examples store (see `cohort device import`).", valueName: "DB"))
  var examples: String

  @Option(help: "The population to join.")
  var population: String = "default"

  @Option(
    help: ArgumentHelp(
      "The device's Ed25519 signing key (PKCS#8 PEM, device-<n>-signing.key), for active secure aggregation; "
        + "needs --cert carrying its public key and --ca.",
      valueName: "KEY"))
  var signingKey: String?

  @Option(help: "Set the device's number (kept in the examples store).")
  var id: Int64?

  @Option(help: "Seed of the device's training randomness (default: the store's own secret seed).")
  var seed: UInt64?

  @Option(help: ArgumentHelp("Work only between these local hours, e.g. 22-6.", valueName: "START-END"))
  var hours: String?

  @Option(help: ArgumentHelp("Work only while the 1-minute load average is at most this.", valueName: "LOAD"))
  var maxLoad: String?

  @Flag(help: "Stop after one acknowledged report.")
  var once = false

  @Option(
    help: ArgumentHelp(
      "The largest model this device accepts, in MB (a task for a larger one is refused before anything is "
        + "downloaded or allocated).", valueName: "MB"))
  var maxModelMB: Int = 512

  @Option(
    help: ArgumentHelp(
      "The longest wait, in seconds, between attempts after failures (lost connections, refusals); "
        + "the wait starts at 1 s and doubles up to this, with jitter.", valueName: "SECONDS"))
  var maxBackoff: Double = 300

  @Option(help: "Log level: trace, debug, info, notice, warning, error.")
  var logLevel: String = "info"

  func validate() throws {
    guard (1...86_400).contains(maxBackoff) else {
      throw ValidationError("--max-backoff is between 1 and 86400 seconds, not \(maxBackoff)")
    }
    guard (1...65_536).contains(maxModelMB) else {
      throw ValidationError("--max-model-mb is between 1 and 65536, not \(maxModelMB)")
    }
    _ = try servers()
    if signingKey != nil, tls.cert == nil || tls.ca == nil {
      throw ValidationError("--signing-key needs --cert (the certificate carrying its public key) and --ca")
    }
  }

  func run() async throws {
    var logger = Logger(label: "cohort.device") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
    let addresses = try servers()
    let security = try tls.security()
    do throws(CohortError) {
      let store = try ExampleStore(path: examples)
      if let id { try store.setIdentity(device: id) }
      let identity = try store.identity()
      let policy = try EligibilityPolicy(hours: hours, maximumLoad: maxLoad)
      let now = Date().timeIntervalSince1970
      guard try store.count(now: now) > 0 else {
        throw CohortError(
          .invalidData, "the examples store \(examples) holds no unexpired examples",
          fix: "import some with `cohort device import DATA.csv --examples \(examples)`")
      }
      let rootSeed = seed ?? identity.seed.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
      var signing: DeviceSigningIdentity?
      if let signingKey, let cert = tls.cert, let ca = tls.ca {
        signing = try await DeviceSigningIdentity.load(
          certificatePEM: try readText(cert, option: "--cert"),
          signingKeyPEM: try readText(signingKey, option: "--signing-key"),
          caPEM: try readText(ca, option: "--ca"), device: Int(identity.device))
      }
      let connections = try addresses.map { address throws(CohortError) in
        try FederationConnection(host: address.host, port: address.port, security: security)
      }
      let channel: any ParticipationChannel =
        connections.count == 1 ? connections[0] : FailoverChannel(connections)
      let population = self.population
      let runtime = DeviceRuntime(
        configuration: .init(
          device: Int(identity.device), population: population, seed: rootSeed,
          initialBackoff: 1, maximumBackoff: maxBackoff,
          maxCheckpointBytes: maxModelMB << 20,
          identity: signing),
        connection: channel,
        examples: {
          LocalExamples(train: try store.examples(now: Date().timeIntervalSince1970))
        },
        ineligibility: {
          let count = (try? store.count(now: Date().timeIntervalSince1970)) ?? 0
          let decision = policy.decide(SystemConditions.read(), examples: count)
          return decision.isEligible ? nil : decision.description
        },
        observe: { result, started, ended in
          let (round, outcome): (Int, ParticipationOutcome)
          switch result {
          case .finished(let r, let accepted, let reason):
            (round, outcome) = (r, accepted ? .accepted : .rejected(reason))
          case .refused(let reason, _): (round, outcome) = (0, .rejected(reason))
          case .abandoned: (round, outcome) = (0, .dropped)
          case .retry, .admitted: return
          }
          try? store.recordParticipation(
            ParticipationRecord(
              round: round, population: population, startedAt: started, endedAt: ended, outcome: outcome))
        },
        logger: logger)
      logger.info("device started", metadata: ["device": "\(identity.device)", "servers": "\(server)"])
      await runtime.run(participations: once ? 1 : nil)
      for connection in connections { connection.close() }
      if once, let last = await runtime.history.last {
        print("participation: \(last)")
      }
    } catch {
      throw error.exit()
    }
  }
}

/// A file's text for `option`, as a CohortError (inside the typed-throws body of `run`).
private func readText(_ path: String, option: String) throws(CohortError) -> String {
  guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
    throw CohortError(
      .io, "\(option) \(path): cannot read the file", fix: "create it with `cohort certs create`")
  }
  return text
}
