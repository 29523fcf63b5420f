import CohortCore
import CohortStore
import CohortTesting
import Foundation
import Testing

/// A child process whose standard output the test reads line by line.
final class ChildProcess: @unchecked Sendable {
  let process = Process()
  private let output = Pipe()
  private var buffer = ""
  /// Everything read so far, for failure messages.
  private(set) var transcript = ""

  init(_ arguments: [String], in directory: URL, limit: Double = 180) throws {
    process.executableURL = cohortBinary
    process.arguments = arguments
    process.currentDirectoryURL = directory
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    // Nothing hangs forever: a child still running after `limit` seconds is stopped, which
    // ends its output and fails the test that waits on it.
    let process = self.process
    DispatchQueue.global().asyncAfter(deadline: .now() + limit) {
      if process.isRunning { process.terminate() }
    }
  }

  /// Reads lines until one contains `text` and returns it; nil when the output ends first.
  func waitForLine(containing text: String) -> String? {
    while true {
      if let newline = buffer.firstIndex(of: "\n") {
        let line = String(buffer[..<newline])
        buffer.removeSubrange(...newline)
        if line.contains(text) { return line }
        continue
      }
      let data = output.fileHandleForReading.availableData
      if data.isEmpty { return nil }
      let text = String(decoding: data, as: UTF8.self)
      buffer += text
      transcript += text
    }
  }

  func kill() {
    Foundation.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  func stop() {
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
  }
}

/// The `cohort` binary next to the test bundle.
let cohortBinary: URL = {
  var candidate = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("cohort")
  while !FileManager.default.isExecutableFile(atPath: candidate.path) && candidate.path != "/cohort" {
    candidate = candidate.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(
      "cohort")
  }
  return candidate
}()

@Suite(.serialized) struct ServeCLITests {
  /// Certificates, a plan of `rounds` rounds for three devices, and their examples stores.
  func federation(in dir: TemporaryDirectory, rounds: Int) throws -> String {
    #expect(try cohort(["certs", "create", "--out", dir.path + "/certs", "--devices", "3"]).status == 0)
    let plan = try String(
      contentsOf: repositoryRoot.appendingPathComponent("Plans/network-demo.yaml"), encoding: .utf8
    )
    .replacingOccurrences(of: "rounds: 5", with: "rounds: \(rounds)")
    let planPath = dir.write("plan.yaml", plan)
    let export = try cohort(["data", "export", "Simulations/network-demo.yaml", "--out", dir.path + "/data"])
    #expect(export.status == 0, "\(export.stderr)")
    for i in 1...3 {
      let imported = try cohort([
        "device", "import", dir.path + "/data/train.csv", "--examples", dir.path + "/device-\(i).sqlite",
        "--device", "\(i - 1)",
      ])
      #expect(imported.status == 0, "\(imported.stderr)")
    }
    return planPath
  }

  func serve(_ dir: TemporaryDirectory, plan: String, listen: String, db: String = "server.sqlite") throws
    -> ChildProcess
  {
    try ChildProcess(serveArguments(plan: plan, listen: listen, db: db), in: dir.url)
  }

  func serveArguments(plan: String, listen: String, db: String) -> [String] {
    [
      "serve", "--plan", plan, "--listen", listen, "--tls-cert", "certs/server.pem", "--tls-key",
      "certs/server-key.pem", "--client-ca", "certs/ca.pem", "--db", db,
    ]
  }

  /// Devices 1…3; with `signing`, each with its signing key (the active secure-aggregation variant).
  func devices(_ dir: TemporaryDirectory, port: String, signing: Bool = false, extra: [String] = []) throws
    -> [ChildProcess]
  {
    try (1...3).map { i in
      try ChildProcess(
        [
          "device", "--server", "127.0.0.1:\(port)", "--ca", "certs/ca.pem", "--cert",
          "certs/device-\(i).pem",
          "--key", "certs/device-\(i)-key.pem", "--examples", "device-\(i).sqlite", "--id", "\(i)",
        ] + (signing ? ["--signing-key", "certs/device-\(i)-signing.key"] : []) + extra, in: dir.url)
    }
  }

  /// The active secure-aggregation variant through the binaries: `cohort certs create` gives each
  /// device its signing key and certificate, the devices load them with --signing-key, and both
  /// rounds commit over mutual TLS.
  @Test func activeSecureAggregationRunsWithTheCertificatesSigningKeys() throws {
    let dir = TemporaryDirectory()
    let planPath = try federation(in: dir, rounds: 2)
    let plan = try String(contentsOfFile: planPath, encoding: .utf8)
    let active = dir.write("active.yaml", plan + "secure_aggregation: {enabled: true, variant: active}\n")
    let server = try serve(dir, plan: active, listen: "127.0.0.1:0")
    guard let listening = server.waitForLine(containing: "listening on") else {
      Issue.record("the server did not start: \(server.transcript)")
      return
    }
    let port = String(listening.split(separator: ":").last!)
    let devices = try devices(dir, port: port, signing: true)
    defer { for d in devices { d.stop() } }
    #expect(server.waitForLine(containing: "run finished after round 2") != nil, "\(server.transcript)")
    server.process.waitUntilExit()
    #expect(server.process.terminationStatus == 0)
    let rounds = try cohort(["runs", "show", "1", "--db", dir.path + "/server.sqlite"])
    #expect(rounds.stdout.contains("rounds committed 2 of"), "\(rounds.stdout)")
  }

  @Test func aSigningKeyNeedsTheCertificateThatCarriesIt() throws {
    let result = try cohort([
      "device", "--server", "127.0.0.1:1", "--ca", "certs/ca.pem", "--examples", "d.sqlite", "--signing-key",
      "certs/device-1-signing.key",
    ])
    #expect(result.status != 0)
    #expect(result.stderr.contains("--signing-key needs --cert"), "\(result.stderr)")
  }

  /// A server of a 5-round plan with its three devices, once it has committed round 2; nil (with
  /// the issue recorded) when it did not get there.
  func federationPastRoundTwo(in dir: TemporaryDirectory) throws -> (
    plan: String, server: ChildProcess, port: String, devices: [ChildProcess]
  )? {
    let plan = try federation(in: dir, rounds: 5)
    let server = try serve(dir, plan: plan, listen: "127.0.0.1:0")
    guard let listening = server.waitForLine(containing: "listening on") else {
      Issue.record("the server did not start: \(server.transcript)")
      return nil
    }
    let port = String(listening.split(separator: ":").last!)
    let devices = try devices(dir, port: port)
    guard server.waitForLine(containing: "round 2 committed") != nil else {
      server.stop()
      for d in devices { d.stop() }
      Issue.record("round 2 never committed: \(server.transcript)")
      return nil
    }
    return (plan, server, port, devices)
  }

  /// The server is killed with SIGKILL right after it commits round 2; started again on the
  /// same port it resumes after round 2, the devices reconnect by themselves, and the run ends
  /// with every round committed once.
  @Test func killedServerResumesFromItsLastCommittedRound() throws {
    let dir = TemporaryDirectory()
    guard let (plan, first, port, devices) = try federationPastRoundTwo(in: dir) else { return }
    defer { for d in devices { d.stop() } }
    first.kill()
    let second = try serve(dir, plan: plan, listen: "127.0.0.1:\(port)")
    let resumed = second.waitForLine(containing: "resuming run")
    #expect(resumed?.contains("after round 2") == true, "\(second.transcript)")
    // A round may be abandoned while the devices reconnect on a loaded machine: count commits.
    #expect(second.waitForLine(containing: "5 rounds committed") != nil, "\(second.transcript)")
    second.process.waitUntilExit()
    #expect(second.process.terminationStatus == 0)
    let rounds = try cohort(["runs", "show", "1", "--db", dir.path + "/server.sqlite"])
    #expect(rounds.stdout.contains("rounds committed 5 of"), "\(rounds.stdout)")
    // No round ran twice: the first server committed two, the second the other three, all
    // numbered after round 2 (one may be abandoned first while the devices reconnect).
    let committedLines = second.transcript.split(separator: "\n").filter { $0.contains(" committed (") }
    #expect(committedLines.count == 3, "\(second.transcript)")
    #expect(
      !committedLines.contains { $0.hasPrefix("round 1 ") || $0.hasPrefix("round 2 ") },
      "\(second.transcript)")
  }

  /// `server.mode: async` through the binaries: the server is killed with SIGKILL once it has
  /// committed version 2 (devices go on training and reporting meanwhile, so it dies with
  /// updates in flight and in its buffer); started again on the same port it resumes the same
  /// run from its stored buffer and commits the rest. Every version folds exactly its two
  /// updates, and no update a device saw acknowledged was folded twice or lost: the devices'
  /// own records of acknowledged (device, version) pairs are distinct, and no device saw more
  /// acknowledged than the server folded of its updates.
  @Test func killedAsyncServerResumesFromItsStoredBuffer() throws {
    let dir = TemporaryDirectory()
    let demo = try String(contentsOfFile: try federation(in: dir, rounds: 6), encoding: .utf8)
    let plan = dir.write(
      "async.yaml",
      demo.replacingOccurrences(
        of: "cohort: {goal: 3, over_selection: 1.0, minimum_fraction: 1.0}",
        with: "mode: async\n  async: {concurrency: 3, buffer: 2, max_staleness: 10}"
      ).replacingOccurrences(
        of: "windows: {selection: 10s, reporting: 60s}",
        with: "windows: {selection: 1s, reporting: 60s, max_retry: 2s}"))
    let first = try serve(dir, plan: plan, listen: "127.0.0.1:0")
    guard let listening = first.waitForLine(containing: "listening on") else {
      Issue.record("the server did not start: \(first.transcript)")
      return
    }
    let port = String(listening.split(separator: ":").last!)
    let devices = try devices(dir, port: port)
    guard first.waitForLine(containing: "version 2 committed") != nil else {
      first.stop()
      for d in devices { d.stop() }
      Issue.record("version 2 never committed: \(first.transcript)")
      return
    }
    first.kill()
    let second = try serve(dir, plan: plan, listen: "127.0.0.1:\(port)")
    let resumed = second.waitForLine(containing: "resuming run")
    #expect(resumed?.contains("resuming run 1 after version") == true, "\(second.transcript)")
    #expect(second.waitForLine(containing: "6 versions committed") != nil, "\(second.transcript)")
    second.process.waitUntilExit()
    #expect(second.process.terminationStatus == 0)
    for d in devices { d.stop() }

    let store = try ResultsStore(path: dir.path + "/server.sqlite")
    let rows = try store.rounds(RunID(1))
    #expect(rows.map(\.round) == Array(1...6), "\(rows)")
    #expect(rows.allSatisfy { $0.outcome == .committed && $0.reported == 2 }, "\(rows)")
    let folds = try store.devices(RunID(1))
    #expect(folds.reduce(0) { $0 + $1.reports } == 12)
    var acknowledged: [Int: [Int]] = [:]
    for i in 1...3 {
      let examples = try ExampleStore(path: dir.path + "/device-\(i).sqlite")
      acknowledged[i] = try examples.participations().filter { $0.outcome == .accepted }.map(\.round)
    }
    for (device, versions) in acknowledged {
      #expect(Set(versions).count == versions.count, "device \(device) acknowledged twice: \(versions)")
      let folded = folds.first { $0.device == device }?.reports ?? 0
      #expect(versions.count <= folded, "device \(device): \(versions) acknowledged, \(folded) folded")
    }
  }

  /// `--db postgres://…`: the server takes the run's leader lease and commits its rounds to
  /// PostgreSQL, then exits; a second server of the same plan on the same database is refused
  /// while the lease is held, and says by whom and what to do.
  @Test(
    .enabled(
      if: ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"] != nil
        || ProcessInfo.processInfo.environment["CI"] == "true",
      "COHORT_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway cluster)"))
  func aServerOnPostgreSQLServesTheRunAndASecondIsRefused() throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let dir = TemporaryDirectory()
    let demo = try String(contentsOfFile: try federation(in: dir, rounds: 2), encoding: .utf8)
    // A plan of its own, so a run left by another test on the same database is not resumed.
    let plan = dir.write(
      "plan.yaml", demo.replacingOccurrences(of: "name: network-demo", with: "name: pg-\(UUID())"))
    let first = try serve(dir, plan: plan, listen: "127.0.0.1:0", db: url)
    guard let listening = first.waitForLine(containing: "listening on") else {
      Issue.record("the server did not start: \(first.transcript)")
      return
    }
    let second = try cohort(serveArguments(plan: plan, listen: "127.0.0.1:0", db: url), in: dir.url)
    #expect(second.status != 0)
    #expect(second.stderr.contains("is served by another server"), "\(second.stderr)")
    let port = String(listening.split(separator: ":").last!)
    let devices = try devices(dir, port: port)
    defer { for d in devices { d.stop() } }
    #expect(first.waitForLine(containing: "run finished after round 2") != nil, "\(first.transcript)")
    first.process.waitUntilExit()
    #expect(first.process.terminationStatus == 0)
  }

  /// Failover on PostgreSQL: a leader and a standby (`--standby`) of the same run, and devices
  /// that know both (`--server A,B`). The leader is killed with SIGKILL after round 2; once its
  /// 2-second lease runs out the standby takes the run over, resumes after the last committed
  /// round and commits the rest. Every round is committed exactly once.
  @Test(
    .enabled(
      if: ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"] != nil
        || ProcessInfo.processInfo.environment["CI"] == "true",
      "COHORT_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway cluster)"))
  func aStandbyTakesOverFromAKilledLeader() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let dir = TemporaryDirectory()
    let demo = try String(contentsOfFile: try federation(in: dir, rounds: 4), encoding: .utf8)
    let name = "pg-\(UUID())"
    let plan = dir.write(
      "plan.yaml", demo.replacingOccurrences(of: "name: network-demo", with: "name: \(name)"))
    let lease = ["--lease-seconds", "2"]
    let leader = try ChildProcess(
      serveArguments(plan: plan, listen: "127.0.0.1:0", db: url) + lease, in: dir.url)
    guard let listening = leader.waitForLine(containing: "listening on") else {
      Issue.record("the leader did not start: \(leader.transcript)")
      return
    }
    let leaderPort = String(listening.split(separator: ":").last!)
    let standbyPort = try freeLoopbackPort()
    let standby = try ChildProcess(
      serveArguments(plan: plan, listen: "127.0.0.1:\(standbyPort)", db: url) + lease + ["--standby"],
      in: dir.url)
    #expect(standby.waitForLine(containing: "standing by") != nil, "\(standby.transcript)")
    // Short back-offs: the devices find the standby soon after the leader is gone.
    let devices = try devices(
      dir, port: "\(leaderPort),127.0.0.1:\(standbyPort)", extra: ["--max-backoff", "1"])
    defer { for d in devices { d.stop() } }
    guard leader.waitForLine(containing: "round 2 committed") != nil else {
      leader.stop()
      standby.stop()
      Issue.record("round 2 never committed: \(leader.transcript)")
      return
    }
    leader.kill()
    let resumed = standby.waitForLine(containing: "resuming run")
    #expect(resumed?.contains("after round") == true, "\(standby.transcript)")
    #expect(standby.waitForLine(containing: "4 rounds committed") != nil, "\(standby.transcript)")
    standby.process.waitUntilExit()
    #expect(standby.process.terminationStatus == 0)
    // Every round once, in order, with no gap: the standby went on after the leader's last commit.
    let store = try await PostgresStore(url: url)
    let run = try #require(try await store.runs().first { $0.planName == name })
    let rounds = try await store.rounds(run.id)
    await store.close()
    #expect(rounds.filter { $0.outcome == .committed }.count == 4, "\(rounds)")
    #expect(rounds.map(\.round) == Array(1...rounds.count), "\(rounds)")
  }

  /// A standby whose leader finishes the run exits, and starts no run of its own: the plan has
  /// one run in the database, finished.
  @Test(
    .enabled(
      if: ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"] != nil
        || ProcessInfo.processInfo.environment["CI"] == "true",
      "COHORT_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway cluster)"))
  func aStandbyExitsWhenItsLeaderFinishesTheRun() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let dir = TemporaryDirectory()
    let demo = try String(contentsOfFile: try federation(in: dir, rounds: 2), encoding: .utf8)
    let name = "pg-\(UUID())"
    let plan = dir.write(
      "plan.yaml", demo.replacingOccurrences(of: "name: network-demo", with: "name: \(name)"))
    let leader = try serve(dir, plan: plan, listen: "127.0.0.1:0", db: url)
    guard let listening = leader.waitForLine(containing: "listening on") else {
      Issue.record("the leader did not start: \(leader.transcript)")
      return
    }
    let standby = try ChildProcess(
      serveArguments(plan: plan, listen: "127.0.0.1:0", db: url) + ["--lease-seconds", "3", "--standby"],
      in: dir.url)
    #expect(standby.waitForLine(containing: "standing by") != nil, "\(standby.transcript)")
    let devices = try devices(dir, port: String(listening.split(separator: ":").last!))
    defer { for d in devices { d.stop() } }
    #expect(leader.waitForLine(containing: "run finished after round 2") != nil, "\(leader.transcript)")
    #expect(
      standby.waitForLine(containing: "finished under the other server") != nil, "\(standby.transcript)")
    standby.process.waitUntilExit()
    #expect(standby.process.terminationStatus == 0)
    let store = try await PostgresStore(url: url)
    let runs = try await store.runs().filter { $0.planName == name }
    await store.close()
    #expect(runs.count == 1 && runs.first?.status == .finished, "\(runs)")
  }

  /// SIGTERM stops the server gracefully after round 2; the run is `interrupted`, and the same
  /// command resumes it under the same run id until every round is committed.
  @Test func terminatedServerResumesTheSameRun() throws {
    let dir = TemporaryDirectory()
    guard let (plan, first, port, devices) = try federationPastRoundTwo(in: dir) else { return }
    defer { for d in devices { d.stop() } }
    first.stop()
    #expect(first.process.terminationStatus == 0, "\(first.transcript)")
    let runs = try cohort(["runs", "list", "--db", dir.path + "/server.sqlite"])
    #expect(runs.stdout.contains("interrupted"), "\(runs.stdout)")
    let second = try serve(dir, plan: plan, listen: "127.0.0.1:\(port)")
    let resumed = second.waitForLine(containing: "resuming run")
    #expect(resumed?.contains("resuming run 1 ") == true, "\(second.transcript)")
    #expect(second.waitForLine(containing: "5 rounds committed") != nil, "\(second.transcript)")
    second.process.waitUntilExit()
    #expect(second.process.terminationStatus == 0)
    let after = try cohort(["runs", "list", "--db", dir.path + "/server.sqlite"])
    // One run, resumed, not a second one started from the initial model.
    let listed = after.stdout.split(separator: "\n").filter { $0.contains("network-demo") }
    #expect(listed.count == 1 && listed[0].contains("finished"), "\(after.stdout)")
    let rounds = try cohort(["runs", "show", "1", "--db", dir.path + "/server.sqlite"])
    #expect(rounds.stdout.contains("rounds committed 5 of"), "\(rounds.stdout)")
  }

  @Test func aTestSetOfAnotherShapeIsRefusedBeforeServing() throws {
    let dir = TemporaryDirectory()
    // Three features and a device column (read as such, not as a fourth feature).
    let test = dir.write("test.csv", "f0,f1,f2,device,label\n0.1,0.2,0.3,4,1\n0.5,0.1,0.0,2,0\n")
    let refused = try cohort([
      "serve", "--plan", "Plans/network-demo.yaml", "--insecure", "--listen", "127.0.0.1:0", "--db",
      dir.path + "/s.sqlite", "--test-data", test,
    ])
    #expect(refused.status != 0)
    #expect(
      refused.stderr.contains("has 3 feature columns but the plan's model takes 60"), "\(refused.stderr)")
  }

  @Test func serveRefusesPlaintextOffLoopbackAndMissingTLS() throws {
    let dir = TemporaryDirectory()
    let noTLS = try cohort(["serve", "--plan", "Plans/network-demo.yaml", "--db", dir.path + "/s.sqlite"])
    #expect(noTLS.status != 0)
    #expect(noTLS.stderr.contains("--tls-cert"), "\(noTLS.stderr)")
    let open = try cohort([
      "serve", "--plan", "Plans/network-demo.yaml", "--insecure", "--listen", "0.0.0.0:0", "--db",
      dir.path + "/s.sqlite",
    ])
    #expect(open.status != 0)
    #expect(open.stderr.contains("loopback"), "\(open.stderr)")
  }
}

/// A loopback port nobody listens on now (the OS picks it), for a server that starts later.
func freeLoopbackPort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { throw CohortError(.io, "no socket for a free port") }
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  address.sin_port = 0
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
  }
  guard bound == 0 else { throw CohortError(.io, "could not bind a loopback socket") }
  _ = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
  }
  return Int(UInt16(bigEndian: address.sin_port))
}
