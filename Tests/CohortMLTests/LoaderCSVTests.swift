import CohortCore
import CohortML
import CohortTesting
import Testing

@Suite struct LoaderCSVTests {
  @Test func loadsFeaturesAndLabels() throws {
    let dir = TemporaryDirectory()
    let path = dir.write("plain.csv", "label,a,b\n1,0.5,2\n0,-1,3e2\n3, 7 ,1.25\n")
    let data = try CSVDataset.load(path: path)
    #expect(data.count == 3)
    #expect(data.featureShape == [2])
    #expect(data.classes == 4)
    #expect(data.labels == [1, 0, 3])
    #expect(data.features == [0.5, 2, -1, 300, 7, 1.25])
    #expect(data.clients == nil && data.clientNames == nil)
  }

  @Test func clientColumnCRLFBlankLinesAndNoFinalNewline() throws {
    let dir = TemporaryDirectory()
    let text = "\u{FEFF}a,client,label,b\r\n1,alice,2,3\r\n\r\n4,bob,0,5\r\n   \r\n6,alice,1.0,7"
    let path = dir.write("clients.csv", text)
    let data = try CSVDataset.load(path: path, clientColumn: "client")
    #expect(data.labels == [2, 0, 1])
    #expect(data.features == [1, 3, 4, 5, 6, 7])
    #expect(data.clients == [0, 1, 0])
    #expect(data.clientNames == ["alice", "bob"])
    #expect(data.featureShape == [2])
  }

  @Test func quotedFields() throws {
    let dir = TemporaryDirectory()
    let text = "\"label\",\"x\",owner\n\"1\",\"2.5\",\"Smith, \"\"J\"\"\"\n0,1,plain\n"
    let data = try CSVDataset.load(path: dir.write("quoted.csv", text), clientColumn: "owner")
    #expect(data.labels == [1, 0])
    #expect(data.features == [2.5, 1])
    #expect(data.clientNames == ["Smith, \"J\"", "plain"])
  }

  @Test func customLabelColumnAndClasses() throws {
    let dir = TemporaryDirectory()
    let path = dir.write("custom.csv", "f1,target\n0.1,1\n0.2,0\n")
    let data = try CSVDataset.load(path: path, labelColumn: "target", classes: 5)
    #expect(data.classes == 5)
    #expect(data.features == [0.1, 0.2])
  }

  @Test func exactDecimalConversion() throws {
    // The fast path and strtod must agree with Swift's own conversion.
    let values = ["0.1", "-123.456", "16", "3.14159265358979", "1e-7", "6.02214076e23", "0.000001", "+2"]
    let dir = TemporaryDirectory()
    let text =
      "label," + values.indices.map { "v\($0)" }.joined(separator: ",") + "\n0,"
      + values.joined(separator: ",") + "\n"
    let data = try CSVDataset.load(path: dir.write("decimals.csv", text))
    #expect(data.features == values.map { Float(Double($0)!) })
  }

  @Test func loadsShippedDigits() throws {
    let data = try CSVDataset.load(path: digitsPath)
    #expect(data.count == 1797)
    #expect(data.featureShape == [64])
    #expect(data.classes == 10)
    #expect(data.labels.prefix(3) == [0, 1, 2])
    #expect(Array(data.features.prefix(8)) == [0, 0, 5, 13, 9, 1, 0, 0])
    #expect(data.features.allSatisfy { $0 >= 0 && $0 <= 16 })
    // Every digit is there, about 180 times each.
    #expect(data.labelCounts().allSatisfy { $0 > 170 && $0 < 190 })
  }

  // MARK: Malformed files

  /// Loads `text` as a CSV file and returns the error, which must be `.invalidData` and name the
  /// file with the line (`path:line`).
  private func malformed(
    _ text: String, line: Int?, clientColumn: String? = nil, classes: Int? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws -> String {
    let dir = TemporaryDirectory()
    let path = dir.write("bad.csv", text)
    let error = try #require(
      dataError { () throws(CohortError) in
        try CSVDataset.load(path: path, clientColumn: clientColumn, classes: classes)
      }, sourceLocation: sourceLocation)
    #expect(error.code == .invalidData, sourceLocation: sourceLocation)
    let place = line.map { "\(path):\($0):" } ?? path
    #expect(error.message.contains(place), "\(error.message)", sourceLocation: sourceLocation)
    return error.message
  }

  @Test func raggedRow() throws {
    let message = try malformed("label,a,b\n1,2,3\n\n1,2\n", line: 4)
    #expect(message.contains("expected 3 fields") && message.contains("found 2"))
    _ = try malformed("label,a,b\r\n1,2,3,4\r\n", line: 2)
    _ = try malformed("label,a,b\n1,2,3,\n", line: 2)
  }

  @Test func nonNumericFeature() throws {
    let message = try malformed("label,a,b\n1,2,3\n0,x7,3\n", line: 3)
    #expect(
      message.contains("'a'") && message.contains("'x7'") && message.contains("expected a finite number"))
    _ = try malformed("label,a\n1,\n", line: 2)  // empty field
    _ = try malformed("label,a\n1,nan\n", line: 2)
    _ = try malformed("label,a\n1,1e39\n", line: 2)  // beyond Float
    _ = try malformed("label,a\n1,1.5.2\n", line: 2)
  }

  @Test func badLabels() throws {
    #expect(try malformed("label,a\n-1,2\n", line: 2).contains("non-negative integer"))
    _ = try malformed("label,a\n1.5,2\n", line: 2)
    _ = try malformed("label,a\ncat,2\n", line: 2)
    _ = try malformed("label,a\n1e12,2\n", line: 2)
    #expect(try malformed("label,a\n0,1\n7,2\n", line: 3, classes: 5).contains("below 5"))
  }

  @Test func missingColumns() throws {
    let message = try malformed("target,p0,p1\n1,2,3\n", line: 1)
    #expect(message.contains("'label'") && message.contains("'target', 'p0', 'p1'"))
    #expect(try malformed("label,a\n1,2\n", line: 1, clientColumn: "user").contains("'user'"))
    #expect(try malformed("label,label,a\n1,1,2\n", line: 1).contains("2 times"))
    #expect(try malformed("label\n1\n", line: 1).contains("no feature columns"))
  }

  @Test func emptyAndHeaderOnlyFiles() throws {
    #expect(try malformed("", line: nil).contains("no header row"))
    #expect(try malformed("\n\n", line: nil).contains("no header row"))
    #expect(try malformed("label,a\n\n", line: nil).contains("no data rows"))
  }

  @Test func quoteErrors() throws {
    #expect(try malformed("label,a\n1,\"2\n", line: 2).contains("never closed"))
    #expect(try malformed("label,a\n1,\"2\"x\n", line: 2).contains("after the closing quote"))
  }

  @Test func unreadableFileIsIOError() throws {
    let dir = TemporaryDirectory()
    let missing = dir.path + "/missing.csv"
    let error = try #require(dataError { () throws(CohortError) in try CSVDataset.load(path: missing) })
    #expect(error.code == .io)
    #expect(error.message.contains(missing))
    let directory = try #require(dataError { () throws(CohortError) in try CSVDataset.load(path: dir.path) })
    #expect(directory.code == .io)
  }

  @Test func sameClientAndLabelColumnIsAConfigurationError() throws {
    let dir = TemporaryDirectory()
    let path = dir.write("x.csv", "label,a\n1,2\n")
    let error = try #require(
      dataError { () throws(CohortError) in try CSVDataset.load(path: path, clientColumn: "label") })
    #expect(error.code == .invalidConfiguration)
  }
}
