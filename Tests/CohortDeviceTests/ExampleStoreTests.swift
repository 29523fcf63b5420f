import CohortCore
import CohortDevice
import CohortML
import CohortStore
import CohortTesting
import Foundation
import Testing

/// 2026-03-01T12:00:00Z: a fixed clock for every test.
private let t0: Double = 1_772_366_400
private let day: Double = 86400

/// A file as `cohort data export` writes it: label, device, f0, f1. Example i of device k has
/// features [i, k].
private let exported = """
  label,device,f0,f1
  0,1,0,1
  1,2,1,2
  2,1,2,1
  1,1,3,1
  0,2,4,2
  """

@Suite struct ExampleStoreTests {
  @Test func importsEveryRowInFileOrderWithoutADeviceFilter() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    let summary = try store.importCSV(
      path: dir.write("train.csv", exported), device: nil, expiresIn: 30 * day, now: t0)
    #expect(summary.rows == 5 && summary.imported == 5 && summary.otherDevices == 0)
    #expect(summary.featureCount == 2 && summary.classes == 3 && summary.total == 5)
    #expect(summary.earliestExpiry == t0 + 30 * day && summary.latestExpiry == t0 + 30 * day)

    let data = try store.examples(now: t0)
    #expect(data.labels == [0, 1, 2, 1, 0])
    #expect(data.features == [0, 1, 1, 2, 2, 1, 3, 1, 4, 2])
    #expect(data.featureShape == [2] && data.classes == 3)
    #expect(try store.count(now: t0) == 5)
  }

  @Test func theDeviceFilterKeepsOnlyThatDevicesRowsInOrder() throws {
    let dir = TemporaryDirectory()
    let path = dir.write("train.csv", exported)
    let one = try ExampleStore(path: dir.file("one.sqlite"))
    let summary = try one.importCSV(path: path, device: 1, expiresIn: day, now: t0)
    #expect(summary.imported == 3 && summary.otherDevices == 2 && summary.rows == 5)
    // The class count comes from the whole file, not only this device's rows.
    #expect(summary.classes == 3)
    let data = try one.examples(now: t0)
    #expect(data.labels == [0, 2, 1])
    #expect(data.features == [0, 1, 2, 1, 3, 1])
    #expect(data.classes == 3)

    let two = try ExampleStore(path: dir.file("two.sqlite"))
    try two.importCSV(path: path, device: 2, expiresIn: day, now: t0)
    #expect(try two.examples(now: t0).features == [1, 2, 4, 2])

    // A device with no rows in the file, and a filter on a file without a device column.
    let three = try ExampleStore(path: dir.file("three.sqlite"))
    let none = #expect(throws: CohortError.self) {
      try three.importCSV(path: path, device: 3, expiresIn: day, now: t0)
    }
    #expect(none?.message.contains("no rows for device 3") == true)
    #expect(none?.fix.contains("1, 2") == true)
    let plain = dir.write("plain.csv", "label,a\n0,1\n")
    let noColumn = #expect(throws: CohortError.self) {
      try three.importCSV(path: plain, device: 1, expiresIn: day, now: t0)
    }
    #expect(noColumn?.message.contains("no 'device' column") == true)
    #expect(try three.count(now: t0) == 0)
  }

  @Test func laterImportsAppendAfterEarlierOnes() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    try store.importCSV(path: dir.write("a.csv", "label,x\n1,10\n0,11\n"), expiresIn: day, now: t0)
    let summary = try store.importCSV(
      path: dir.write("b.csv", "x,label\n12,4\n13,2\n"), expiresIn: day, now: t0 + 1)
    #expect(summary.total == 4)
    // The class count grows with a later file's higher labels.
    #expect(summary.classes == 5)
    let data = try store.examples(now: t0 + 2)
    #expect(data.labels == [1, 0, 4, 2])
    #expect(data.features == [10, 11, 12, 13])
    #expect(data.classes == 5)
  }

  @Test func examplesExpireAfterTheGivenTimeAndPurgeDeletesThem() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    try store.importCSV(path: dir.write("old.csv", "label,x\n0,1\n1,2\n"), expiresIn: day, now: t0)
    try store.importCSV(path: dir.write("new.csv", "label,x\n1,3\n"), expiresIn: day, now: t0 + 12 * 3600)

    #expect(try store.count(now: t0 + day - 1) == 3)
    // An example expiring exactly now has expired.
    #expect(try store.count(now: t0 + day) == 1)
    #expect(try store.examples(now: t0 + day).features == [3])
    #expect(try store.count(now: t0 + 2 * day) == 0)

    #expect(try store.purgeExpired(now: t0 + day) == 2)
    #expect(try store.purgeExpired(now: t0 + day) == 0)
    // What is left is still there at an earlier time: purging only deletes.
    #expect(try store.count(now: t0) == 1)
    // The shape stays after every example is gone.
    #expect(try store.purgeExpired(now: t0 + 3 * day) == 1)
    let empty = try store.examples(now: t0)
    #expect(empty.count == 0 && empty.featureShape == [1] && empty.classes == 2)
  }

  @Test func anExpiresAtColumnOverridesTheFileExpiryPerRow() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    let text = """
      label,expires_at,f0
      0,\(Int(t0) + 3600),1
      1,,2
      0,\(Int(t0) - 1),3
      1,\(Int(t0) + 7200),4
      """
    let summary = try store.importCSV(path: dir.write("rows.csv", text), expiresIn: day, now: t0)
    // The row that had expired already is skipped and counted; the empty field takes the default.
    #expect(summary.imported == 3 && summary.alreadyExpired == 1 && summary.rows == 4)
    #expect(summary.featureCount == 1)
    #expect(summary.earliestExpiry == t0 + 3600 && summary.latestExpiry == t0 + day)
    #expect(try store.examples(now: t0).features == [1, 2, 4])
    #expect(try store.examples(now: t0 + 3600).features == [2, 4])
    #expect(try store.examples(now: t0 + 7200).features == [2])
  }

  @Test func reopeningKeepsTheIdentityAndTheExamples() throws {
    let dir = TemporaryDirectory()
    let path = dir.file("device.sqlite")
    let first: DeviceIdentity
    do {
      let store = try ExampleStore(path: path)
      first = try store.identity()
      try store.importCSV(path: dir.write("train.csv", exported), device: 2, expiresIn: day, now: t0)
    }
    #expect(first.device >= 1 && !first.isGiven)
    #expect(first.seed.count == 32)
    #expect("\(first)" == "device \(first.device) (drawn at random)")

    let reopened = try ExampleStore(path: path)
    #expect(try reopened.identity() == first)
    #expect(try reopened.examples(now: t0).features == [1, 2, 4, 2])

    // Another file is another device, with a seed of its own.
    let other = try ExampleStore(path: dir.file("other.sqlite")).identity()
    #expect(other.seed != first.seed)
  }

  @Test func anotherFeatureCountIsRefusedAndNothingIsImported() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    try store.importCSV(path: dir.write("two.csv", "label,f0,f1\n0,1,2\n"), expiresIn: day, now: t0)
    let error = #expect(throws: CohortError.self) {
      try store.importCSV(path: dir.write("three.csv", "label,f0,f1,f2\n1,1,2,3\n"), expiresIn: day, now: t0)
    }
    #expect(error?.code == .shapeMismatch)
    #expect(error?.message.contains("3 feature columns") == true)
    #expect(error?.message.contains("have 2 features") == true)
    #expect(try store.count(now: t0) == 1)
    #expect(try store.shape()?.featureCount == 2)
  }

  @Test func aMalformedLineIsReportedWithItsLineAndColumnAndNothingIsImported() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    let path = dir.write("bad.csv", "label,device,f0,f1\n0,1,0.5,1\n\n1,1,oops,2\n")
    let error = #expect(throws: CohortError.self) {
      try store.importCSV(path: path, device: 1, expiresIn: day, now: t0)
    }
    #expect(error?.code == .invalidData)
    #expect(error?.message.hasPrefix("\(path):4: column 'f0' (field 3)") == true)
    #expect(error?.message.contains("'oops'") == true)
    #expect(try store.count(now: t0) == 0)
    #expect(try store.shape() == nil)

    let cases: [(text: String, expected: String)] = [
      ("label,f0\n0,1\n1\n", "bad.csv:3: expected 2 fields as in the header on line 1, found 1"),
      ("label,f0\n-1,1\n", "bad.csv:2: column 'label' (field 1): expected a non-negative integer"),
      ("label,f0\n1.5,1\n", "bad.csv:2: column 'label' (field 1)"),
      ("label,device,f0\n1,x,1\n", "bad.csv:2: column 'device' (field 2): expected an integer"),
      ("label,f0,expires_at\n1,1,soon\n", "bad.csv:2: column 'expires_at' (field 3)"),
      ("label,f0\n1,1e39\n", "bad.csv:2: column 'f0' (field 2): expected a finite number"),
      ("label,f0\n1,\"2\n", "bad.csv:2: field 2 opens a quote that is never closed"),
      ("f0,f1\n1,2\n", "bad.csv:1: the header has no 'label' column"),
      ("label,label,f0\n1,1,2\n", "bad.csv:1: the header names the column 'label' 2 times"),
      ("label,device\n1,1\n", "bad.csv:1: the header has no feature columns"),
      ("label,f0\n", "no data rows after the header on line 1"),
      ("", "the file has no header row"),
    ]
    for (text, expected) in cases {
      let file = dir.write("bad.csv", text)
      let error = #expect(throws: CohortError.self) {
        try store.importCSV(path: file, device: text.contains("device") ? 1 : nil, expiresIn: day, now: t0)
      }
      #expect(
        error?.message.contains(expected) == true, "\(error?.message ?? "") for \(text.debugDescription)")
    }
    let missing = #expect(throws: CohortError.self) {
      try store.importCSV(path: dir.file("missing.csv"), expiresIn: day, now: t0)
    }
    #expect(missing?.code == .notFound)
    let never = #expect(throws: CohortError.self) {
      try store.importCSV(path: dir.write("ok.csv", "label,f0\n1,1\n"), expiresIn: 0, now: t0)
    }
    #expect(never?.message.contains("expiresIn") == true)
  }

  @Test func quotesCRLFAByteOrderMarkAndNamedFeatureColumnsAreRead() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    let text = "\u{FEFF}height,\"label\",weight\r\n1.5,\"2\",-0.25\r\n\r\n 2 ,0.0, 3e2 \r\n"
    try store.importCSV(path: dir.write("named.csv", text), expiresIn: day, now: t0)
    let data = try store.examples(now: t0)
    #expect(data.labels == [2, 0])
    #expect(data.features == [1.5, -0.25, 2, 300])
  }

  @Test func featuresKeepEveryBitThroughTheStore() throws {
    let dir = TemporaryDirectory()
    let store = try ExampleStore(path: dir.file("device.sqlite"))
    var rng = RandomStream(seed: 7)
    let values = (0..<64).map { _ in Float(rng.normal() * 1000) }
    var text = "label," + (0..<8).map { "f\($0)" }.joined(separator: ",") + "\n"
    for r in 0..<8 {
      text += "\(r % 3)," + values[(r * 8)..<(r * 8 + 8)].map { "\($0)" }.joined(separator: ",") + "\n"
    }
    try store.importCSV(path: dir.write("random.csv", text), expiresIn: day, now: t0)
    let data = try store.examples(now: t0)
    #expect(data.features.map(\.bitPattern) == values.map(\.bitPattern))
  }
}
