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
  public static func load(
    path: String, labelColumn: String = "label", clientColumn: String? = nil, classes: Int? = nil
  ) throws(CohortError) -> Dataset {
    let bytes = try DataFile.read(path)
    return try parse(
      bytes, path: path, labelColumn: labelColumn, clientColumn: clientColumn, classes: classes)
  }

  static func parse(
    _ bytes: [UInt8], path: String, labelColumn: String, clientColumn: String?, classes: Int?
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
        classes: classes)
      return try parser.run()
    }
  }
}

/// One field of a record: a byte range (without its quotes) and whether it was quoted.
private struct CSVField {
  var start: Int
  var end: Int
  var quoted: Bool
}

/// Splits bytes into records of fields, counting lines for error messages.
private struct CSVScanner {
  let bytes: UnsafeBufferPointer<UInt8>
  let path: String
  var position = 0
  /// The line the next record starts on (1-based).
  var line = 1
  /// The line the last record returned started on.
  var recordLine = 1

  private static let comma = UInt8(ascii: ",")
  private static let quote = UInt8(ascii: "\"")
  private static let cr = UInt8(ascii: "\r")
  private static let lf = UInt8(ascii: "\n")

  init(bytes: UnsafeBufferPointer<UInt8>, path: String) {
    self.bytes = bytes
    self.path = path
    // Skip a UTF-8 byte-order mark, which spreadsheet programs like to write.
    if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { position = 3 }
  }

  /// Reads the next record into `fields`; false at the end of the input.
  mutating func next(into fields: inout [CSVField]) throws(CohortError) -> Bool {
    fields.removeAll(keepingCapacity: true)
    let n = bytes.count
    guard position < n else { return false }
    recordLine = line
    while true {
      if bytes[position] == Self.quote {
        let start = position + 1
        let openedOn = line
        var i = start
        var closed = false
        while i < n {
          let b = bytes[i]
          if b == Self.quote {
            if i + 1 < n && bytes[i + 1] == Self.quote {
              i += 2
              continue
            }
            closed = true
            break
          }
          if b == Self.lf { line += 1 }
          i += 1
        }
        guard closed else {
          throw CohortError(
            .invalidData,
            "\(path):\(openedOn): field \(fields.count + 1) opens a quote that is never closed; "
              + "expected a closing '\"'")
        }
        fields.append(CSVField(start: start, end: i, quoted: true))
        position = i + 1
        while position < n && NumberParsing.isSpace(bytes[position]) { position += 1 }
      } else {
        let start = position
        while position < n && bytes[position] != Self.comma && bytes[position] != Self.lf {
          position += 1
        }
        var end = position
        if end > start && bytes[end - 1] == Self.cr { end -= 1 }
        fields.append(CSVField(start: start, end: end, quoted: false))
      }
      guard position < n else { return true }
      let b = bytes[position]
      if b == Self.comma {
        position += 1
        if position == n {
          // A trailing comma at the very end: one last, empty field.
          fields.append(CSVField(start: n, end: n, quoted: false))
          return true
        }
        continue
      }
      if b == Self.lf {
        position += 1
        line += 1
        return true
      }
      if b == Self.cr && (position + 1 == n || bytes[position + 1] == Self.lf) {
        position += position + 1 == n ? 1 : 2
        line += 1
        return true
      }
      throw CohortError(
        .invalidData,
        "\(path):\(line): unexpected \(DataLimits.excerpt(bytes, position, position + 1)) after the "
          + "closing quote of field \(fields.count); expected ',' or the end of the line")
    }
  }

  /// A record with nothing but spaces: a blank line, skipped.
  func isBlank(_ fields: [CSVField]) -> Bool {
    guard fields.count == 1, !fields[0].quoted else { return false }
    for i in fields[0].start..<fields[0].end where !NumberParsing.isSpace(bytes[i]) { return false }
    return true
  }

  /// The text of a field: quotes undoubled; unquoted text trimmed of spaces.
  func text(_ field: CSVField) -> String {
    var s = field.start
    var e = field.end
    if !field.quoted {
      while s < e && NumberParsing.isSpace(bytes[s]) { s += 1 }
      while e > s && NumberParsing.isSpace(bytes[e - 1]) { e -= 1 }
    }
    let raw = String(decoding: UnsafeBufferPointer(rebasing: bytes[s..<e]), as: UTF8.self)
    return field.quoted ? raw.replacingOccurrences(of: "\"\"", with: "\"") : raw
  }
}

private struct CSVParser {
  var scanner: CSVScanner
  let path: String
  let labelColumn: String
  let clientColumn: String?
  let classes: Int?

  init(
    bytes: UnsafeBufferPointer<UInt8>, path: String, labelColumn: String, clientColumn: String?,
    classes: Int?
  ) {
    self.scanner = CSVScanner(bytes: bytes, path: path)
    self.path = path
    self.labelColumn = labelColumn
    self.clientColumn = clientColumn
    self.classes = classes
  }

  mutating func run() throws(CohortError) -> Dataset {
    var fields: [CSVField] = []
    repeat {
      guard try scanner.next(into: &fields) else {
        throw CohortError(
          .invalidData,
          "\(path): the file has no header row; expected a first line naming the columns, "
            + "one of them '\(labelColumn)'")
      }
    } while scanner.isBlank(fields)
    let headerLine = scanner.recordLine
    let names = fields.map { scanner.text($0) }
    let labelIndex = try column(labelColumn, role: "label", in: names, line: headerLine)
    let clientIndex = try clientColumn.map { (name) throws(CohortError) -> Int in
      try column(name, role: "client", in: names, line: headerLine)
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

    while try scanner.next(into: &fields) {
      if scanner.isBlank(fields) { continue }
      let line = scanner.recordLine
      guard fields.count == names.count else {
        throw CohortError(
          .invalidData,
          "\(path):\(line): expected \(names.count) fields as in the header on line \(headerLine), "
            + "found \(fields.count)")
      }
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
