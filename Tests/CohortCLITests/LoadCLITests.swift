import CohortTesting
import Foundation
import Testing

/// `cohort load` against several servers (replicas of one federation).
@Suite struct LoadCLITests {
  /// A malformed --server list or --server-pid list is refused before anything connects, with a
  /// message that names the entry and says what to write instead.
  @Test func aMalformedServerListNamesTheEntry() throws {
    func refusal(_ arguments: [String]) throws -> String {
      let result = try cohort(["load", "--insecure", "--devices", "1", "--duration", "0"] + arguments)
      #expect(result.status != 0, "\(arguments): \(result.stdout)")
      return result.stderr
    }
    let empty = try refusal(["--server", "127.0.0.1:7070,,127.0.0.1:7071"])
    #expect(empty.contains("entry 2 of 3 is empty"), "\(empty)")
    let trailing = try refusal(["--server", "127.0.0.1:7070,"])
    #expect(trailing.contains("entry 2 of 2 is empty"), "\(trailing)")
    let portless = try refusal(["--server", "127.0.0.1:7070,localhost"])
    #expect(portless.contains("entry 2, 'localhost', is not HOST:PORT"), "\(portless)")
    #expect(portless.contains("127.0.0.1:7070,127.0.0.1:7071"), "\(portless)")
    let twice = try refusal(["--server", "127.0.0.1:7070, 127.0.0.1:7070"])
    #expect(twice.contains("entries 1 and 2 are the same server"), "\(twice)")
    let single = try refusal(["--server", "localhost"])
    #expect(single.contains("--server localhost is not HOST:PORT"), "\(single)")
    let pids = try refusal(["--server", "127.0.0.1:7070,127.0.0.1:7071", "--server-pid", "4711"])
    #expect(pids.contains("--server-pid gives 1 pids for 2 servers"), "\(pids)")
    let notPid = try refusal(["--server", "127.0.0.1:7070,127.0.0.1:7071", "--server-pid", "4711,x"])
    #expect(notPid.contains("entry 2, 'x', is not a process id"), "\(notPid)")
  }

  /// Two servers (child processes on OS-chosen loopback ports): the sessions and check-ins go to
  /// both, and each one's part of the JSON report adds up to the totals.
  @Test func loadsTwoServersAndReportsEachOnesPart() throws {
    let dir = TemporaryDirectory()
    let servers = try (1...2).map { i in
      try ChildProcess(
        [
          "serve", "--plan", repositoryRoot.appendingPathComponent("Plans/load-test.yaml").path, "--listen",
          "127.0.0.1:0", "--insecure", "--db", dir.path + "/server-\(i).sqlite",
        ], in: dir.url)
    }
    defer { for server in servers { server.stop() } }
    var addresses: [String] = []
    for server in servers {
      guard let listening = server.waitForLine(containing: "listening on") else {
        Issue.record("a server did not start: \(server.transcript)")
        return
      }
      addresses.append("127.0.0.1:" + listening.split(separator: ":").last!)
    }
    let result = try cohort([
      "load", "--server", addresses.joined(separator: ","), "--insecure", "--devices", "20", "--duration",
      "0.5",
      "--rate", "40", "--json", "--server-pid",
      servers.map { "\($0.process.processIdentifier)" }.joined(separator: ","),
    ])
    #expect(result.status == 0, "\(result.stderr)")
    let report = try #require(
      try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout)")
    let parts = try #require(report["servers"] as? [[String: Any]], "\(result.stdout)")
    #expect(parts.map { $0["server"] as? String } == addresses)
    #expect(report["sessionsHeld"] as? Int == 20, "\(result.stdout)")
    #expect(parts.map { $0["sessionsHeld"] as? Int } == [10, 10], "\(result.stdout)")
    #expect(report["checkIns"] as? Int == 20, "\(result.stdout)")
    #expect(parts.map { $0["checkIns"] as? Int } == [10, 10], "\(result.stdout)")
    for part in parts {
      #expect(part["serverResidentBytesHeld"] as? Int != nil, "\(part)")
    }
    // The text report ends with a line per server.
    let text = try cohort([
      "load", "--server", addresses.joined(separator: ","), "--insecure", "--devices", "4", "--duration", "0",
    ])
    #expect(text.status == 0, "\(text.stderr)")
    #expect(text.stdout.contains("sessions held      4 of 4"), "\(text.stdout)")
    for address in addresses {
      #expect(
        text.stdout.split(separator: "\n").contains { $0.hasPrefix(address + " ") && $0.contains(" 2 ") },
        "\(text.stdout)")
    }
  }
}
