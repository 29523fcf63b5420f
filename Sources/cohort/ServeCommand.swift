import ArgumentParser
import CohortCore
import CohortML
import CohortOperations
import CohortServer
import CohortServing
import CohortSimulator
import CohortStore
import CohortTransport
import Foundation
import Logging
import ServiceLifecycle

/// `cohort serve`: a network server for one plan.
struct ServeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve a plan to real devices over gRPC with TLS.",
    discussion: """
      Runs the plan's rounds with devices that connect over the network (`cohort device`), \
      committing every round (its record and checkpoint) to the results database in one \
      transaction. After a crash (even kill -9), starting the same command again resumes the \
      run from its last committed round; devices reconnect by themselves.

      TLS is required: --tls-cert and --tls-key (PEM). With --client-ca, devices must present a \
      certificate signed by that CA (mutual TLS). `cohort certs create --out certs` makes a \
      development CA, a server certificate and device certificates:

        cohort certs create --out certs --devices 3
        cohort serve --plan Plans/synthetic-fedavg.yaml --listen 127.0.0.1:7070 \\
          --tls-cert certs/server.pem --tls-key certs/server-key.pem --client-ca certs/ca.pem \\
          --db server.sqlite --metrics 127.0.0.1:9090

      --insecure serves plaintext instead, and only on a loopback address (for experiments). \
      Prometheus metrics (rounds, devices connected, check-ins, reports accepted and rejected \
      by reason, bytes, round duration; gauges of the last committed round, its test accuracy and \
      loss with --test-data, and ε with differential privacy), each with its # HELP text, are \
      served at http://HOST:PORT/metrics with --metrics. \
      SIGTERM or SIGINT stops the server gracefully: the round in flight is abandoned and \
      recorded, committed rounds are kept, and the run is left `interrupted`: the same command \
      resumes it under the same run id. If a round cannot be committed (a full disk, a database \
      another process holds), the server retries with back-off while telling devices to come \
      back later, and after six attempts exits non-zero naming the cause. The server exits when \
      the plan's rounds are committed (or server.max_attempts rounds were tried).
      """)

  @Option(help: ArgumentHelp("The plan to serve (Plans/*.yaml).", valueName: "PLAN"))
  var plan: String

  @Option(help: ArgumentHelp("Address to listen on; port 0 lets the OS choose.", valueName: "HOST:PORT"))
  var listen: String = "127.0.0.1:7070"

  @Option(help: ArgumentHelp("The server's certificate chain (PEM).", valueName: "CERT"))
  var tlsCert: String?

  @Option(help: ArgumentHelp("The server's private key (PEM).", valueName: "KEY"))
  var tlsKey: String?

  @Option(help: ArgumentHelp("Require device certificates signed by this CA (mutual TLS).", valueName: "CA"))
  var clientCa: String?

  @Option(
    help: ArgumentHelp(
      "With a PostgreSQL --db: how long the run's leader lease lasts without renewal (renewed every "
        + "third of it); a server that dies is taken over that long after.",
      valueName: "SECONDS"))
  var leaseSeconds: Double = 30

  @Flag(
    help: ArgumentHelp(
      "With a PostgreSQL --db: if another server holds the run's lease, wait for it (a standby) and "
        + "take the run over when the lease runs out, instead of refusing; exits when the run finishes "
        + "under the other server."))
  var standby = false

  @Flag(
    help: ArgumentHelp(
      "With a PostgreSQL --db: serve the run as one of several replicas. Every replica accepts "
        + "devices and shares each round's cohort through the database; the replica holding the "
        + "run's lease leads the round (combines the replicas' partial aggregates and commits it), "
        + "and another takes over within --lease-seconds when it dies. Start the same command on "
        + "each server."))
  var replica = false

  @Flag(help: "Serve plaintext without TLS; allowed only on a loopback address.")
  var insecure = false

  @Option(
    help: ArgumentHelp(
      "The results database: a SQLite file, or a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB), "
        + "where the server takes the run's leader lease and another server of the same run is refused "
        + "until it is released or runs out (synchronous plans only).",
      valueName: "PATH|URL"))
  var db: String = "cohort-server.sqlite"

  @Option(help: ArgumentHelp("Serve Prometheus metrics over HTTP here.", valueName: "HOST:PORT"))
  var metrics: String?

  @Option(help: "The device population this server coordinates.")
  var population: String = "default"

  @Option(
    help: ArgumentHelp(
      "Seed of the initial model and the rounds' public codec randomness.",
      discussion:
        "Default: the seed of the run being resumed, or a new one from libsodium (stored with the run). A "
        + "scenario's seed gives the simulator's initial model, to compare a served run with a simulation."))
  var seed: UInt64?

  @Option(
    help: ArgumentHelp(
      "Devices in the population, N: SCAFFOLD needs it, and the privacy accountant's sampling rate uses it.",
      valueName: "N"))
  var populationSize: Int?

  @Flag(help: "Accept TLS 1.3 only (by default TLS 1.2 with AEAD cipher suites is accepted too).")
  var tls13Only = false

  @Option(
    help: ArgumentHelp(
      "Connections held at once; more are closed at accept.",
      discussion: "Default: 30,000, or what the file-descriptor limit (ulimit -n) leaves room for.",
      valueName: "N"))
  var maxConnections: Int?

  @Option(
    help: ArgumentHelp(
      "A held-out test set (CSV: a label column, feature columns, an optional device column, as `cohort "
        + "data export` writes) to evaluate each new global model on centrally.",
      discussion: "Evaluated on the rounds server.evaluation names; accuracy and loss are stored with each "
        + "round, as a simulation's are.",
      valueName: "FILE.csv"))
  var testData: String?

  @Option(
    help: ArgumentHelp(
      "Which rounds' checkpoints to keep: all, last, or every:N (rounds that are multiples of N).",
      discussion: "The final checkpoint is always kept.", valueName: "all|last|every:N"),
    transform: CheckpointRetention.parse)
  var keepCheckpoints: CheckpointRetention = .all

  @Option(help: "Log level: trace, debug, info, notice, warning, error.")
  var logLevel: String = "info"

  func validate() throws {
    if insecure, tlsCert != nil || tlsKey != nil {
      throw ValidationError("--insecure serves plaintext: drop --tls-cert and --tls-key, or drop --insecure")
    }
    if !insecure, tlsCert == nil || tlsKey == nil {
      throw ValidationError(
        "TLS needs --tls-cert and --tls-key (make a development pair with `cohort certs create --out certs`); "
          + "--insecure serves plaintext on loopback instead")
    }
    if clientCa != nil, insecure { throw ValidationError("--client-ca needs TLS; drop --insecure") }
    _ = try HostPort(listen, option: "--listen")
    if let metrics { _ = try HostPort(metrics, option: "--metrics") }
    if let maxConnections, maxConnections < 1 {
      throw ValidationError("--max-connections must be at least 1, not \(maxConnections)")
    }
    if tls13Only, insecure { throw ValidationError("--tls13-only needs TLS; drop --insecure") }
    if let populationSize, populationSize < 1 {
      throw ValidationError("--population-size must be at least 1, not \(populationSize)")
    }
  }

  func run() async throws {
    // Memory a load leaves behind goes back to the system once its sessions end.
    ProcessMemory.limitArenas()
    let trimming = ProcessMemory.trimPeriodically()
    defer { trimming.cancel() }
    // Every device session holds a socket or a stream; thousands need the hard limit.
    let descriptors = raiseOpenFileLimit()
    let level = Logger.Level(rawValue: logLevel) ?? .info
    var logger = Logger(label: "cohort.serve") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = level
    let loadedPlan: Plan
    try ConfigurationFileKind.requirePlan(plan, command: "cohort serve --plan")
    do throws(ConfigurationError) { loadedPlan = try Plan.load(path: plan) } catch { throw error.exit() }
    let address = try HostPort(listen, option: "--listen")
    let security: ServerSecurity
    if insecure {
      security = .insecureLoopback
    } else {
      security = .tls(
        certificateChainPEM: try readPEM(tlsCert!, option: "--tls-cert"),
        privateKeyPEM: try readPEM(tlsKey!, option: "--tls-key"),
        clientCAPEM: try clientCa.map { try readPEM($0, option: "--client-ca") })
    }
    let endpoint = MetricsEndpoint()
    let server: FederationServer
    // A SQLite file, or a PostgreSQL database other servers may share.
    var store: ResultsStore?
    var shared: PostgresStore?
    do throws(CohortError) {
      let evaluator = try testData.map { path throws(CohortError) in
        try Self.evaluator(testData: path, plan: loadedPlan)
      }
      var runSeed = seed ?? 0
      if Self.isPostgres(db) {
        guard leaseSeconds.isFinite, (1...86_400).contains(leaseSeconds) else {
          throw CohortError(
            .invalidConfiguration, "--lease-seconds is \(leaseSeconds); give 1 to 86400",
            fix: "a lease of a few seconds to a minute: a dead server is taken over that long after")
        }
        guard keepCheckpoints == .all else {
          throw CohortError(
            .invalidConfiguration, "--keep-checkpoints is carried out on a SQLite --db only, for now",
            fix: "leave --keep-checkpoints out (all checkpoints are kept) or give --db a file")
        }
        let postgres = try await PostgresStore(url: db, logger: logger)
        shared = postgres
        if seed == nil { runSeed = try await ServedRun.seed(inShared: postgres, plan: loadedPlan) }
      } else {
        guard leaseSeconds == 30 else {
          throw CohortError(
            .invalidConfiguration,
            "--lease-seconds sets the leader lease of a PostgreSQL --db; a SQLite file has none",
            fix: "leave --lease-seconds out, or give --db a postgres:// URL")
        }
        guard !standby else {
          throw CohortError(
            .invalidConfiguration,
            "--standby waits for another server's lease, which only a PostgreSQL --db has",
            fix: "give --db a postgres:// URL shared with the leading server, or leave --standby out")
        }
        guard !replica else {
          throw CohortError(
            .invalidConfiguration,
            "--replica shares a run through a PostgreSQL --db; a SQLite file is one server's",
            fix: "give --db a postgres:// URL that every replica shares, or leave --replica out")
        }
        let file = try ResultsStore(path: db, exclusiveWriter: DatabaseOption.commandLine)
        store = file
        if seed == nil { runSeed = try ServedRun.seed(in: file, plan: loadedPlan) }
      }
      let configuration = FederationServerConfiguration(
        plan: loadedPlan, planPath: plan, host: address.host, port: address.port, security: security,
        population: population, seed: runSeed, populationSize: populationSize,
        connections: ConnectionLimits(
          maximumConnections: maxConnections
            ?? ConnectionLimits.fitting(descriptorLimit: descriptors),
          tls13Only: tls13Only))
      if let shared, replica {
        guard !standby else {
          throw CohortError(
            .invalidConfiguration, "--standby and --replica do not go together: every replica serves devices",
            fix: "leave --standby out; a replica takes the lead when the leader dies")
        }
        server = try await FederationServer.openReplica(
          configuration: configuration, store: shared, replica: Self.leaseHolder(),
          leaseSeconds: leaseSeconds,
          evaluator: evaluator, logger: logger, metrics: endpoint.metricsFactory)
      } else if let shared {
        let holder = Self.leaseHolder()
        // A standby serves only the run it waited for, never a new one.
        var waited: RunID?
        var storageErrors = 0
        while true {
          do throws(CohortError) {
            server = try await FederationServer.open(
              configuration: configuration, shared: shared, holder: holder, run: waited,
              leaseSeconds: leaseSeconds, evaluator: evaluator, logger: logger,
              metrics: endpoint.metricsFactory)
            break
          } catch  where standby && error.code == .fenced {
            storageErrors = 0
            if waited == nil {
              // The run the leader serves; none left means it finished in the meantime.
              waited = try await shared.resumableRun(planSHA256: loadedPlan.sha256)?.id
              guard waited != nil else {
                say("the run finished under the other server")
                await shared.close()
                return
              }
              say("standing by: \(error.message)")
            }
            try? await Task.sleep(for: .seconds(leaseSeconds / 3))
          } catch  where standby && waited != nil && error.code == .storage && storageErrors < 10 {
            // A passing database error (a restart, a network blip) does not end a standby; ten in
            // a row (with no answer from the store between them) are not passing.
            storageErrors += 1
            say("standing by: \(error.message); trying again")
            try? await Task.sleep(for: .seconds(leaseSeconds / 3))
          } catch  where standby && waited != nil && error.code == .notFound {
            say("run \(waited!) finished under the other server")
            await shared.close()
            return
          }
        }
      } else {
        server = try FederationServer(
          configuration: configuration, store: store, evaluator: evaluator, logger: logger,
          metrics: endpoint.metricsFactory)
      }
    } catch {
      await shared?.close()
      throw error.exit()
    }
    if let metrics {
      do {
        let m = try HostPort(metrics, option: "--metrics")
        let port = try await endpoint.start(host: m.host, port: m.port)
        say("metrics on http://\(m.host):\(port)/metrics")
      } catch {
        // Not served: a lease taken on a shared run goes back at once.
        await server.served.releaseWithoutServing()
        await shared?.close()
        throw error
      }
    }
    // In async mode a row is a model version (one buffer applied), not a round.
    let asynchronous = loadedPlan.server.mode == .async
    let unit = asynchronous ? "version" : "round"
    if server.resumedAfter > 0 {
      say("resuming run \(server.run.map { "\($0)" } ?? "-") after \(unit) \(server.resumedAfter)")
    }
    let run = server.run
    let retention = keepCheckpoints
    let log = logger
    let file = store
    await server.coordinator.observeRounds { record in
      // One line per round, for people and scripts following the run.
      let accuracy = record.evalAccuracy.map { ", test accuracy \(Format.fixed($0, 4))" } ?? ""
      let counts =
        asynchronous
        ? "\(record.reported) updates folded, mean staleness \(Format.fixed(record.meanStaleness ?? 0, 2))"
        : "\(record.reported) of \(record.selected) reported"
      let detail =
        record.outcome == .committed
        ? "committed (\(counts)\(accuracy))"
        : "abandoned: \(record.abandonReason ?? "-")"
      say("\(unit) \(record.round) \(detail)")
      // The round is written before observers hear of it; a restart resumes from the latest
      // checkpoint only, so older ones may go at once.
      if record.outcome == .committed, let run, let file {
        do throws(CohortError) {
          try file.pruneCheckpoints(run, keeping: retention)
        } catch {
          log.warning("could not delete old checkpoints", metadata: ["error": "\(error.message)"])
        }
      }
    }
    let service = FederationServerService(server: server) { port in
      // One line a script (or a test) can wait for.
      say("listening on \(address.host):\(port)")
    }
    let group = ServiceGroup(
      configuration: .init(
        services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
    try? await endpoint.stop()
    // One self-contained file once the server is done: the write-ahead log folded in.
    try? store?.close()
    await shared?.close()
    if let failure = await server.coordinator.failure {
      Console.error("\(failure)")
      throw ExitCode.failure
    }
    let finished = await server.coordinator.isFinished
    let round = await server.coordinator.globalRound
    let committed = await server.coordinator.committedRounds
    if finished {
      say("run finished after \(unit) \(round) (\(committed) \(unit)s committed)")
    } else {
      say("stopped; the last committed \(unit) is \(round); run the same command to resume")
    }
  }
}

extension ServeCommand {
  /// Whether `--db` names a PostgreSQL database rather than a SQLite file.
  static func isPostgres(_ db: String) -> Bool {
    let lower = db.lowercased()
    return lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://")
  }

  /// This server process's name on a shared run's lease: host, process and a random part, so a
  /// restarted server never passes for its predecessor.
  static func leaseHolder() -> String {
    let host = ProcessInfo.processInfo.hostName.prefix(64)
    return "\(host):\(getpid()):\(String(SecureRandom.uint64(), radix: 16))"
  }

  /// Central evaluation on `--test-data`: its features must be the plan's model inputs.
  static func evaluator(testData path: String, plan: Plan) throws(CohortError) -> CentralTestEvaluator {
    // A `device` column, if there is one, is read as such (not as a feature) and otherwise ignored.
    let test = try CSVDataset.load(
      path: path, labelColumn: "label", clientColumn: "device", classes: plan.model.classes,
      clientColumnOptional: true)
    guard test.featureCount == plan.model.inputCount else {
      throw CohortError(
        .shapeMismatch,
        "--test-data \(path) has \(test.featureCount) feature columns but the plan's model takes "
          + "\(plan.model.inputCount) inputs",
        fix:
          "give a test set of the plan's data (`cohort data export SCENARIO --out DIR` writes DIR/test.csv)")
    }
    return CentralTestEvaluator(
      network: Network(plan: plan.model), test: test,
      parallelism: ProcessInfo.processInfo.activeProcessorCount)
  }
}

/// The server as a service-lifecycle service: a graceful shutdown abandons the round in flight.
struct FederationServerService: Service {
  let server: FederationServer
  let onListening: @Sendable (Int) -> Void

  func run() async throws {
    try await withGracefulShutdownHandler {
      do {
        try await server.run(onListening: onListening)
      } catch is CohortError {
        // The coordinator gave up (it keeps the error in `failure`); the command reports it
        // once the group has shut down.
      }
    } onGracefulShutdown: {
      server.shutdown()
    }
  }
}

/// A HOST:PORT option.
struct HostPort {
  var host: String
  var port: Int

  init(_ text: String, option: String) throws {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
      (0...65535).contains(port), colon != text.startIndex
    else {
      throw ValidationError("\(option) \(text) is not HOST:PORT (for example 127.0.0.1:7070)")
    }
    host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
    self.port = port
  }
}

/// Reads a PEM file, naming the option when it cannot.
func readPEM(_ path: String, option: String) throws -> String {
  guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
    throw ValidationError("\(option) \(path): cannot read the file (create one with `cohort certs create`)")
  }
  guard text.contains("-----BEGIN") else { throw ValidationError("\(option) \(path) is not a PEM file") }
  return text
}

/// A line on standard output at once (unbuffered, so a script or test reading a pipe sees it).
func say(_ line: String) {
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// How a device-side command (`cohort device`, `cohort load`) reaches the server.
struct ClientTLSOptions: ParsableArguments {
  @Option(help: ArgumentHelp("The CA that signed the server's certificate (PEM).", valueName: "CA"))
  var ca: String?

  @Option(help: ArgumentHelp("A device certificate, for mutual TLS (PEM).", valueName: "CERT"))
  var cert: String?

  @Option(help: ArgumentHelp("Its private key (PEM).", valueName: "KEY"))
  var key: String?

  @Flag(help: "Connect without TLS (only to a server started with --insecure on loopback).")
  var insecure = false

  func validate() throws {
    if insecure == (ca != nil) {
      throw ValidationError(
        "give --ca (the CA of the server's certificate), or --insecure for a plaintext loopback server")
    }
    if (cert == nil) != (key == nil) { throw ValidationError("mutual TLS needs both --cert and --key") }
  }

  func security() throws -> ClientSecurity {
    insecure
      ? .insecure
      : .tls(
        caPEM: try readPEM(ca!, option: "--ca"),
        certificatePEM: try cert.map { try readPEM($0, option: "--cert") },
        privateKeyPEM: try key.map { try readPEM($0, option: "--key") })
  }
}
