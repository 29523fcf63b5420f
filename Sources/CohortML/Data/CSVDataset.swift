public import CohortCore
import Foundation

/// Loads a labelled table from a CSV file.
///
/// The first non-blank row is a header naming the columns. One column holds the class label
/// (a non-negative integer; `3.0` is accepted as 3); an optional client column holds the owner of
/// each row (any string; owners become `clientNames` in first-seen order); every other column is
/// a numeric feature, in file order. Fields may be quoted as in RFC 4180. LF and CRLF line ends,
/// a UTF-8 byte-order mark, blank lines and a missing final newline are all accepted; ragged rows,
/// non-numeric or non-finite features and bad labels are rejected with the file, line and column.
///
/// The file is parsed as bytes, with a fast exact path for short decimals, so a 100 MB file takes
/// about a second in a release build.
public enum CSVDataset {
  /// - Parameters:
  ///   - classes: the number of classes, when the file may not contain the highest label;
  ///     labels must then be below it. Defaults to the highest label plus one.
  ///   - clientColumnOptional: a header without `clientColumn` gives a dataset without owners
  ///     instead of an error (a test file whose examples are central only).
  public static func load(
    path: String, labelColumn: String = "label", clientColumn: String? = nil, classes: Int? = nil,
    clientColumnOptional: Bool = false
  ) throws(CohortError) -> Dataset {
    let bytes = try DataFile.read(path)
    return try parse(
      bytes, path: path, labelColumn: labelColumn, clientColumn: clientColumn, classes: classes,
      clientColumnOptional: clientColumnOptional)
  }

  static func parse(
    _ bytes: [UInt8], path: String, labelColumn: String, clientColumn: String?, classes: Int?,
    clientColumnOptional: Bool = false
  ) throws(CohortError) -> Dataset {
    if let classes, classes < 1 || classes > DataLimits.maximumClasses {
      throw CohortError(
        .invalidConfiguration,
        "classes is \(classes) for \(path); expected 1…\(DataLimits.maximumClasses)")
    }
    if let clientColumn, clientColumn == labelColumn {
      throw CohortError(
        .invalidConfiguration,
        "the client column and the label column are both '\(labelColumn)'; they must differ")
    }
    return try bytes.withUnsafeBufferPointer { (buffer) throws(CohortError) -> Dataset in
      var parser = CSVParser(
        bytes: buffer, path: path, labelColumn: labelColumn, clientColumn: clientColumn,
        classes: classes, clientColumnOptional: clientColumnOptional)
      return try parser.run()
    }
  }
}

private struct CSVParser {
  var scanner: CSVScanner
  let path: String
  let labelColumn: String
  let clientColumn: String?
  let classes: Int?
  let clientColumnOptional: Bool

  init(
    bytes: UnsafeBufferPointer<UInt8>, path: String, labelColumn: String, clientColumn: String?,
    classes: Int?, clientColumnOptional: Bool
  ) {
    self.scanner = CSVScanner(bytes: bytes, path: path)
    self.path = path
    self.labelColumn = labelColumn
    self.clientColumn = clientColumn
    self.classes = classes
    self.clientColumnOptional = clientColumnOptional
  }

  mutating func run() throws(CohortError) -> Dataset {
    let (names, headerLine) = try scanner.header(naming: labelColumn)
    var fields: [CSVField] = []
    let labelIndex = try column(labelColumn, role: "label", in: names, line: headerLine)
    let clientIndex = try clientColumn.flatMap { (name) throws(CohortError) -> Int? in
      if clientColumnOptional && !names.contains(name) { return nil }
      return try column(name, role: "client", in: names, line: headerLine)
    }
    let featureCount = names.count - 1 - (clientIndex == nil ? 0 : 1)
    guard featureCount > 0 else {
      throw CohortError(
        .invalidData,
        "\(path):\(headerLine): the header has no feature columns (columns: \(DataLimits.list(names))); "
          + "expected numeric columns besides the label\(clientIndex == nil ? "" : " and client")")
    }

    // 0 = feature, 1 = label, 2 = client, per column.
    var role = [UInt8](repeating: 0, count: names.count)
    role[labelIndex] = 1
    if let clientIndex { role[clientIndex] = 2 }
    let labelLimit = classes ?? DataLimits.maximumClasses

    var features: [Float] = []
    var labels: [Int32] = []
    var owners: [Int32] = []
    var ownerNames: [String] = []
    var ownerIndex: [String: Int32] = [:]
    let bytes = scanner.bytes

    while try scanner.nextRow(into: &fields, columns: names.count, headerLine: headerLine) {
      let line = scanner.recordLine
      if labels.isEmpty {
        // Size the arrays from the first row's length: appends then rarely reallocate.
        let rowBytes = Swift.max(1, scanner.position - fields[0].start)
        let rows = bytes.count / rowBytes + 1
        features.reserveCapacity(rows * featureCount)
        labels.reserveCapacity(rows)
      }
      for (k, field) in fields.enumerated() {
        switch role[k] {
        case 0:
          guard let value = NumberParsing.double(bytes, field.start, field.end),
            let f = NumberParsing.float(value)
          else {
            throw CohortError(
              .invalidData,
              "\(path):\(line): column '\(names[k])' (field \(k + 1)): expected a finite number "
                + "within the range of Float, found \(DataLimits.excerpt(bytes, field.start, field.end))")
          }
          features.append(f)
        case 1:
          guard let value = NumberParsing.double(bytes, field.start, field.end),
            let y = NumberParsing.label(value, below: labelLimit)
          else {
            let bound = classes.map { "below \($0) (classes)" } ?? "below \(labelLimit)"
            throw CohortError(
              .invalidData,
              "\(path):\(line): label column '\(names[k])' (field \(k + 1)): expected a non-negative "
                + "integer \(bound), found \(DataLimits.excerpt(bytes, field.start, field.end))")
          }
          labels.append(y)
        default:
          let name = scanner.text(field)
          if let index = ownerIndex[name] {
            owners.append(index)
          } else {
            let index = Int32(ownerNames.count)
            ownerIndex[name] = index
            ownerNames.append(name)
            owners.append(index)
          }
        }
      }
    }

    guard let maxLabel = labels.max() else {
      throw CohortError(
        .invalidData, "\(path): no data rows after the header on line \(headerLine); expected at least one")
    }
    return Dataset(
      features: features, labels: labels, featureShape: [featureCount],
      classes: classes ?? Int(maxLabel) + 1,
      clients: clientIndex == nil ? nil : owners,
      clientNames: clientIndex == nil ? nil : ownerNames)
  }

  /// The index of the column called `name`, which must occur exactly once.
  private func column(_ name: String, role: String, in names: [String], line: Int) throws(CohortError) -> Int
  {
    let matches = names.indices.filter { names[$0] == name }
    guard let first = matches.first else {
      throw CohortError(
        .invalidData,
        "\(path):\(line): the header has no \(role) column '\(name)'; "
          + "columns present: \(DataLimits.list(names))",
        fix: "name the \(role) column with the \(role) column option")
    }
    guard matches.count == 1 else {
      throw CohortError(
        .invalidData,
        "\(path):\(line): the header names the \(role) column '\(name)' \(matches.count) times; "
          + "expected it once")
    }
    return first
  }
}
