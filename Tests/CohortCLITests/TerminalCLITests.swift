import CohortStore
import CohortTesting
import Foundation
import Testing

func merged(_ changes: [String: String?]) -> [String: String] {
  var environment = ProcessInfo.processInfo.environment
  for (key, value) in changes { environment[key] = value }
  return environment
}

/// Kills `process` with SIGKILL (nothing flushed) if it still runs after `seconds`: a test that
/// waits on its output then fails instead of hanging. Not a sleep: nothing waits for it.
func watchdog(_ process: Process, seconds: Double) -> DispatchWorkItem {
  let pid = process.processIdentifier
  let item = DispatchWorkItem { kill(pid, SIGKILL) }
  DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: item)
  return item
}

@Suite struct TerminalCLITests {
  /// Piped, each round's line reaches the pipe as it is printed. The run stops after round 1's
  /// line at a test-only gate (a FIFO) until the test, having read that line, lets it go on:
  /// were the line held in a block buffer, the test would never see it, the watchdog would kill
  /// the run and the test would fail. No sleeps, no timing.
  @Test func roundLinesReachAPipeAsTheyArePrinted() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    let fifo = dir.file("gate")
    #expect(mkfifo(fifo, 0o600) == 0)
    // Held open read-write here, so the run's open never blocks and a byte written waits for it.
    let gate = open(fifo, O_RDWR)
    #expect(gate >= 0)
    defer { close(gate) }

    let process = Process()
    process.executableURL = cohortBinary
    process.arguments = ["simulate", scenario, "--db", dir.file("r.sqlite")]
    process.currentDirectoryURL = repositoryRoot
    process.environment = merged(["COHORT_TEST_ROUND_GATE": fifo])
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    let guardian = watchdog(process, seconds: 300)
    defer { guardian.cancel() }

    var lines: [String] = []
    var buffer = ""
    var released = false
    while true {
      let data = out.fileHandleForReading.availableData
      if data.isEmpty { break }
      buffer += String(decoding: data, as: UTF8.self)
      while let newline = buffer.firstIndex(of: "\n") {
        let line = String(buffer[..<newline])
        buffer.removeSubrange(...newline)
        lines.append(line)
        if line.hasPrefix("round 1 "), !released {
          // The run waits at the gate, so round 2 has not been printed: let it go on.
          #expect(!lines.contains { $0.hasPrefix("round 2 ") })
          var byte: UInt8 = 1
          #expect(write(gate, &byte, 1) == 1)
          released = true
        }
      }
    }
    process.waitUntilExit()
    #expect(released, "round 1's line never reached the pipe: \(lines)")
    #expect(process.terminationStatus == 0)
    #expect(lines.contains { $0.hasPrefix("round 6 ") }, "\(lines)")
    // Loading the data is one log line when piped, before the run's header.
    #expect(lines.filter { $0.hasPrefix("loading data: synthetic") }.count == 1, "\(lines)")
    #expect(
      lines.firstIndex { $0.hasPrefix("loading data") }! < lines.firstIndex { $0.hasPrefix("run 1 in") }!)

    // The finished run is one self-contained file.
    #expect(FileManager.default.fileExists(atPath: dir.file("r.sqlite")))
    #expect(!FileManager.default.fileExists(atPath: dir.file("r.sqlite-wal")))
    #expect(!FileManager.default.fileExists(atPath: dir.file("r.sqlite-shm")))
  }

  /// On a terminal (a pseudo-terminal 60 columns wide) the bar fits the width, and every
  /// round's line stays in the history above it.
  @Test func onATerminalTheBarFitsTheWidthAndTheRoundsStayAbove() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    // A Linux pseudo-terminal by hand (posix_openpt and kin are not in Swift's Glibc): open the
    // multiplexer, unlock the pair (TIOCSPTLCK) and ask for its number (TIOCGPTN), as glibc does.
    let master = open("/dev/ptmx", O_RDWR | O_NOCTTY)
    #expect(master >= 0)
    defer { close(master) }
    var unlock: Int32 = 0
    var number: UInt32 = 0
    #expect(ioctl(master, 0x4004_5431, &unlock) == 0)
    #expect(ioctl(master, 0x8004_5430, &number) == 0)
    let terminal = open("/dev/pts/\(number)", O_RDWR | O_NOCTTY)
    #expect(terminal >= 0)
    var size = winsize(ws_row: 24, ws_col: 60, ws_xpixel: 0, ws_ypixel: 0)
    #expect(ioctl(terminal, UInt(TIOCSWINSZ), &size) == 0)

    let process = Process()
    process.executableURL = cohortBinary
    process.arguments = ["simulate", scenario, "--db", dir.file("t.sqlite")]
    process.currentDirectoryURL = repositoryRoot
    process.environment = merged(["COLUMNS": nil])
    process.standardOutput = FileHandle(fileDescriptor: terminal, closeOnDealloc: false)
    process.standardError = FileHandle.nullDevice
    try process.run()
    // Only the child holds the terminal now: its output ends (EIO) when it exits.
    close(terminal)
    let guardian = watchdog(process, seconds: 300)
    defer { guardian.cancel() }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = read(master, &chunk, chunk.count)
      if n <= 0 { break }
      bytes += chunk[0..<n]
    }
    process.waitUntilExit()
    #expect(process.terminationStatus == 0)
    let text = String(decoding: bytes, as: UTF8.self)
    #expect(text.contains("\u{1B}[K"), "the bar is redrawn in place")
    let segments = text.replacingOccurrences(of: "\u{1B}[K", with: "")
      .split(omittingEmptySubsequences: true) { $0 == "\r" || $0 == "\n" || $0 == "\r\n" }.map(String.init)
    let bars = segments.filter { $0.contains("█") || $0.contains("░") }
    #expect(!bars.isEmpty, "\(segments)")
    for bar in bars { #expect(bar.count < 60, "\(bar.count) columns: \(bar)") }
    for round in 1...6 {
      #expect(segments.contains { $0.hasPrefix("round \(round) (") }, "round \(round) is not in the history")
    }
    #expect(text.contains("loading data: synthetic"))
  }

  /// Help is wrapped by swift-argument-parser at the terminal's width (here COLUMNS): prose
  /// paragraphs are not hard-wrapped in the source, so they fill a wide terminal and fit a narrow one.
  @Test func helpWrapsAtTheTerminalsWidth() throws {
    let narrow = try cohort(["simulate", "--help"], environment: ["COLUMNS": "60"])
    #expect(narrow.status == 0)
    // The usage line is the library's own and is not wrapped.
    for line in narrow.stdout.split(separator: "\n") where !line.hasPrefix("USAGE:") {
      #expect(line.count <= 60, "\(line)")
    }
    let wide = try cohort(["simulate", "--help"], environment: ["COLUMNS": "200"])
    let paragraph = wide.stdout.split(separator: "\n").first {
      $0.contains("Runs the plan round after round")
    }
    #expect((paragraph?.count ?? 0) > 120, "\(wide.stdout)")
    #expect(wide.stdout.contains("--keep-checkpoints"))
  }

  @Test func aPlanWhereAScenarioIsExpectedIsNamedAsSuch() throws {
    let dir = TemporaryDirectory()
    let result = try cohort(["simulate", "Plans/network-demo.yaml", "--db", dir.file("x.sqlite")])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains(
        "Plans/network-demo.yaml is a plan; `cohort simulate` takes a scenario, which names a plan"),
      "\(result.stderr)")
    #expect(result.stderr.contains("plan: Plans/network-demo.yaml"), "\(result.stderr)")
  }

  @Test func aScenarioWhereAPlanIsExpectedIsNamedAsSuch() throws {
    let dir = TemporaryDirectory()
    let result = try cohort([
      "serve", "--plan", "Simulations/network-demo.yaml", "--insecure", "--db", dir.file("s.sqlite"),
    ])
    #expect(result.status != 0)
    #expect(
      result.stderr.contains(
        "Simulations/network-demo.yaml is a scenario; `cohort serve --plan` takes a plan"),
      "\(result.stderr)")
    #expect(
      result.stderr.contains("give the plan it names: /") && result.stderr.contains("Plans/network-demo.yaml")
    )
  }

  /// `--keep-checkpoints` keeps what it says, and always the final checkpoint; `runs show`
  /// shows each round's simulated seconds and the real seconds it took.
  @Test func keepCheckpointsAndRealSeconds() throws {
    let dir = TemporaryDirectory()
    let scenario = dir.write("small.yaml", smallScenario)
    for (option, db) in [("every:4", "e.sqlite"), ("last", "l.sqlite")] {
      let result = try cohort([
        "simulate", scenario, "--db", dir.file(db), "--keep-checkpoints", option, "--json",
      ])
      #expect(result.status == 0, "\(result.stderr)")
    }
    let whole = try simulateJSON([scenario, "--db", dir.file("a.sqlite")])
    let every = try ResultsStore(path: dir.file("e.sqlite"))
    let run = RunID(1)
    let committed = try every.rounds(run).filter { $0.outcome == .committed }.map(\.round)
    let last = try #require(committed.last)
    #expect(try every.checkpointRounds(run) == committed.filter { $0 % 4 == 0 || $0 == last })
    #expect(try ResultsStore(path: dir.file("l.sqlite")).checkpointRounds(run) == [last])
    // Retention changes what is stored, not the run.
    #expect(
      try every.checkpoint(run, round: nil).weights.sha256 == whole["checkpoint_sha256"] as? String)
    let refused = try cohort(["simulate", scenario, "--keep-checkpoints", "some"])
    #expect(refused.status != 0)

    let shown = try cohort(["runs", "show", "1", "--db", dir.file("a.sqlite")])
    #expect(shown.stdout.contains("real s"), "\(shown.stdout)")
  }
}
