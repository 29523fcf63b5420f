import CohortCore
import CohortML
import CohortTesting
import Testing

@Suite struct LoaderLEAFTests {
  static let valid = """
    {"users": ["f_0001", "f_0002"], "num_samples": [2, 1], "hierarchies": [],
     "user_data": {
       "f_0001": {"x": [[0.0, 0.5, 1.0], [1e-3, -2, 3]], "y": [4, 0]},
       "f_0002": {"x": [[7, 8, 9]], "y": [61]}
     }}
    """

  @Test func loadsUsersAsClients() throws {
    let dir = TemporaryDirectory()
    let data = try LEAFDataset.load(path: dir.write("train.json", Self.valid))
    #expect(data.count == 3)
    #expect(data.featureShape == [3])
    #expect(data.features == [0, 0.5, 1, 0.001, -2, 3, 7, 8, 9])
    #expect(data.labels == [4, 0, 61])
    #expect(data.classes == 62)
    #expect(data.clients == [0, 0, 1])
    #expect(data.clientNames == ["f_0001", "f_0002"])
    let partition = try Partitioner.natural(data)
    #expect(partition.clients == [[0, 1], [2]])
  }

  @Test func classesOverrideAndSeveralFiles() throws {
    let dir = TemporaryDirectory()
    let second = """
      {"users": ["f_0003", "f_0001"], "num_samples": [1, 1],
       "user_data": {"f_0003": {"x": [[1, 1, 1]], "y": [2]}, "f_0001": {"x": [[2, 2, 2]], "y": [3]}}}
      """
    let data = try LEAFDataset.load(
      paths: [dir.write("a.json", Self.valid), dir.write("b.json", second)], classes: 62)
    #expect(data.count == 5)
    #expect(data.classes == 62)
    #expect(data.clientNames == ["f_0001", "f_0002", "f_0003"])
    #expect(data.clients == [0, 0, 1, 2, 0])
  }

  @Test func numSamplesIsOptional() throws {
    let dir = TemporaryDirectory()
    let text = #"{"users": ["a"], "user_data": {"a": {"x": [[1.5]], "y": [1]}}}"#
    let data = try LEAFDataset.load(path: dir.write("n.json", text))
    #expect(data.features == [1.5] && data.labels == [1])
  }

  // MARK: Malformed files

  /// Loads `text` and returns the message, which must be `.invalidData` and name the file and
  /// the JSON path.
  @discardableResult
  private func malformed(
    _ text: String, at jsonPath: String?, classes: Int? = nil,
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws -> String {
    let dir = TemporaryDirectory()
    let path = dir.write("bad.json", text)
    let error = try #require(
      dataError { () throws(CohortError) in try LEAFDataset.load(path: path, classes: classes) },
      sourceLocation: sourceLocation)
    #expect(error.code == .invalidData, sourceLocation: sourceLocation)
    let place = jsonPath.map { "\(path): \($0):" } ?? path
    #expect(error.message.contains(place), "\(error.message)", sourceLocation: sourceLocation)
    return error.message
  }

  @Test func textFeaturesAreRejectedClearly() throws {
    // Shakespeare: x is a list of strings, y a list of characters.
    let shakespeare = #"""
      {"users": ["THE_TEMPEST"], "num_samples": [1],
       "user_data": {"THE_TEMPEST": {"x": ["To be, or not to b"], "y": ["e"]}}}
      """#
    let message = try malformed(shakespeare, at: #"$.user_data["THE_TEMPEST"].x[0]"#)
    #expect(message.contains("only numeric feature vectors are supported"))
    // Sent140: x is a list of lists of strings.
    let sent140 = #"""
      {"users": ["u"], "num_samples": [1],
       "user_data": {"u": {"x": [["1467810369", "Mon Apr 06", "NO_QUERY", "u", "hello"]], "y": [1]}}}
      """#
    #expect(
      try malformed(sent140, at: #"$.user_data["u"].x[0][0]"#).contains(
        "only numeric feature vectors are supported"))
  }

  @Test func numSamplesMustMatch() throws {
    let text = #"""
      {"users": ["a", "b"], "num_samples": [1, 3],
       "user_data": {"a": {"x": [[1]], "y": [0]}, "b": {"x": [[2], [3]], "y": [1, 1]}}}
      """#
    #expect(try malformed(text, at: "$.num_samples[1]").contains("expected 2"))
    try malformed(
      #"{"users": ["a"], "num_samples": [], "user_data": {"a": {"x": [[1]], "y": [0]}}}"#, at: "$.num_samples"
    )
  }

  @Test func structuralErrors() throws {
    try malformed("[1, 2]", at: "$")
    #expect(try malformed(#"{"user_data": {}}"#, at: "$").contains("\"users\""))
    try malformed(#"{"users": "a", "user_data": {}}"#, at: "$.users")
    try malformed(#"{"users": [3], "user_data": {}}"#, at: "$.users[0]")
    try malformed(#"{"users": ["a"], "user_data": {}}"#, at: "$.user_data")
    try malformed(#"{"users": ["a"], "user_data": {"a": {"x": [[1]]}}}"#, at: #"$.user_data["a"].y"#)
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1], [2]], "y": [0]}}}"#, at: #"$.user_data["a"]"#)
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1]], "y": [0]}, "zz": {"x": [], "y": []}}}"#,
      at: #"$.user_data["zz"]"#)
    try malformed(#"{"users": [], "user_data": {}}"#, at: nil)
  }

  @Test func badVectorsAndLabels() throws {
    let ragged = #"""
      {"users": ["a", "b"],
       "user_data": {"a": {"x": [[1, 2]], "y": [0]}, "b": {"x": [[1, 2, 3]], "y": [0]}}}
      """#
    #expect(try malformed(ragged, at: #"$.user_data["b"].x[0]"#).contains("expected 2"))
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1, true]], "y": [0]}}}"#, at: #"$.user_data["a"].x[0][1]"#
    )
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1, null]], "y": [0]}}}"#, at: #"$.user_data["a"].x[0][1]"#
    )
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1e300]], "y": [0]}}}"#, at: #"$.user_data["a"].x[0][0]"#)
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [5], "y": [0]}}}"#, at: #"$.user_data["a"].x[0]"#)
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1]], "y": [-1]}}}"#, at: #"$.user_data["a"].y[0]"#)
    try malformed(
      #"{"users": ["a"], "user_data": {"a": {"x": [[1]], "y": [0.5]}}}"#, at: #"$.user_data["a"].y[0]"#)
    #expect(
      try malformed(
        #"{"users": ["a"], "user_data": {"a": {"x": [[1]], "y": [9]}}}"#, at: #"$.user_data["a"].y[0]"#,
        classes: 5
      )
      .contains("below 5"))
  }

  @Test func invalidJSON() throws {
    #expect(try malformed(#"{"users": ["a"], "#, at: nil).contains("not valid JSON"))
  }
}
