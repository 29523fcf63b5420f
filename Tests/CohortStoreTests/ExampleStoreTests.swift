import CohortCore
import CohortStore
import CohortTesting
import Foundation
import Testing

/// 2026-03-01T12:00:00Z: a fixed clock for every test.
private let t0: Double = 1_772_366_400

/// The device's examples store as storage: its identity, participation history and file.
/// (Importing CSV files and reading a dataset back are the device's: CohortDeviceTests.)
@Suite struct ExampleStoreTests {
  @Test func aGivenDeviceNumberReplacesTheDrawnOneAndThenStays() throws {
    let dir = TemporaryDirectory()
    let path = dir.file("device.sqlite")
    let drawn = try ExampleStore(path: path).identity()
    do {
      let store = try ExampleStore(path: path)
      try store.setIdentity(device: 7)
      try store.setIdentity(device: 7)
      let refused = #expect(throws: CohortError.self) { try store.setIdentity(device: 8) }
      #expect(refused?.message.contains("belongs to device 7") == true)
      #expect(throws: CohortError.self) { try store.setIdentity(device: 0) }
    }
    let identity = try ExampleStore(path: path).identity()
    #expect(identity.device == 7 && identity.isGiven)
    #expect(identity.seed == drawn.seed)
  }

  @Test func participationsAreKeptNewestFirst() throws {
    let dir = TemporaryDirectory()
    let path = dir.file("device.sqlite")
    let accepted = ParticipationRecord(
      round: 1, population: "mnist", startedAt: t0, endedAt: t0 + 30, outcome: .accepted, bytesUp: 1000,
      bytesDown: 5000)
    do {
      let store = try ExampleStore(path: path)
      #expect(try store.participations().isEmpty)
      try store.recordParticipation(accepted)
      try store.recordParticipation(
        ParticipationRecord(
          round: 2, population: "mnist", startedAt: t0 + 60, endedAt: t0 + 70, outcome: .rejected("late")))
      try store.recordParticipation(
        ParticipationRecord(
          round: 3, population: "mnist", startedAt: t0 + 120, endedAt: t0 + 121, outcome: .dropped))
      let bad = #expect(throws: CohortError.self) {
        try store.recordParticipation(
          ParticipationRecord(
            round: 4, population: "mnist", startedAt: t0, endedAt: t0 - 1, outcome: .dropped))
      }
      #expect(bad?.message.contains("endedAt") == true)
      #expect(throws: CohortError.self) { try store.participations(limit: -1) }
    }
    let store = try ExampleStore(path: path)
    let all = try store.participations()
    #expect(all.map(\.round) == [3, 2, 1])
    #expect(all.map(\.outcome.rawValue) == ["dropped", "rejected:late", "accepted"])
    #expect(all.last == accepted)
    #expect(try store.participations(limit: 2).map(\.round) == [3, 2])
    #expect(try store.participations(limit: 0).isEmpty)
  }

  @Test func theFileIsInWALModeAndOtherFilesAreRefused() throws {
    let dir = TemporaryDirectory()
    let path = dir.file("device.sqlite")
    let store = try ExampleStore(path: path)
    withExtendedLifetime(store) {
      #expect(FileManager.default.fileExists(atPath: path + "-wal"))
    }
    let notADatabase = dir.write("notes.sqlite", String(repeating: "not sqlite\n", count: 200))
    let error = #expect(throws: CohortError.self) { try ExampleStore(path: notADatabase) }
    #expect(error?.code == .storage)
  }
}
