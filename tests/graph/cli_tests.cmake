# The `nodemeta` command, run as built: exit statuses and output. Label graph.
set(_bundled ${PROJECT_SOURCE_DIR}/data/graphs/mlp_mixer_s16.json.gz)
set(_broken ${CMAKE_CURRENT_SOURCE_DIR}/data/broken)

# nodemeta_cli_test(<name> RC <status> [REGEX <re>] [NOT_REGEX <re>] ARGS <args...>); an
# argument <empty> is passed as an empty string.
function(nodemeta_cli_test name)
  cmake_parse_arguments(ARG "STDOUT_EMPTY" "RC;REGEX;NOT_REGEX" "ARGS" ${ARGN})
  string(REPLACE ";" "\\;" _args "${ARG_ARGS}")
  set(_defs -DEXE=$<TARGET_FILE:nodemeta_cli> "-DARGS=${_args}" -DRC=${ARG_RC})
  if(DEFINED ARG_REGEX)
    list(APPEND _defs "-DREGEX=${ARG_REGEX}")
  endif()
  if(DEFINED ARG_NOT_REGEX)
    list(APPEND _defs "-DNOT_REGEX=${ARG_NOT_REGEX}")
  endif()
  if(ARG_STDOUT_EMPTY)
    list(APPEND _defs -DSTDOUT_EMPTY=1)
  endif()
  add_test(NAME cli.${name} COMMAND ${CMAKE_COMMAND} ${_defs} -P ${CMAKE_CURRENT_SOURCE_DIR}/check_cli.cmake)
  set_tests_properties(cli.${name} PROPERTIES LABELS graph TIMEOUT 120)
endfunction()

# Help is CLI11's (issue 12): every option, its short form and value name.
nodemeta_cli_test(help RC 0
  REGEX "usage: nodemeta \\[options\\] <command>\n.*--version.*commands:\n +run +load GRAPH.*\n +inspect +print.*\n +help +show this help, or a command's"
  ARGS --help)
nodemeta_cli_test(help_short RC 0 REGEX "usage: nodemeta " ARGS -h)
nodemeta_cli_test(help_command RC 0 REGEX "usage: nodemeta " ARGS help)
nodemeta_cli_test(run_help RC 0
  REGEX "usage: nodemeta run \\[options\\] \\[GRAPH\\].*-h,--help.*-t,--threads N.*-p,--passes LIST.*cost,fuse,propagate,strip_debug,verify.*-r,--repeat R.*--json FILE.*-o,--output FILE.*-m,--mode M.*--max-input-bytes N.*--max-depth D.*exit status: 0 verified clean"
  NOT_REGEX "Options:|\n\n\n" ARGS run --help)
nodemeta_cli_test(run_help_short RC 0 REGEX "usage: nodemeta run " ARGS run -h)
nodemeta_cli_test(inspect_help RC 0
  REGEX "usage: nodemeta inspect \\[options\\] GRAPH.*-n,--node NAME.*--max-input-bytes N.*--max-depth D"
  NOT_REGEX "Options:|\n\n\n" ARGS inspect --help)
# The version is CMakeLists.txt's project(VERSION), through nodemeta/version.h.
string(REPLACE "." "\\." _version_re "${PROJECT_VERSION}")
nodemeta_cli_test(version RC 0 REGEX "^nodemeta ${_version_re}\n$" ARGS --version)
nodemeta_cli_test(run_default_graph RC 0
  REGEX "mlp_mixer_s16, 137 nodes.*cost +137 +137.*fuse +137->121 +16.*strip_debug +121 +120 .* 120 .*verify: clean"
  ARGS run --threads 2)
nodemeta_cli_test(run_one_thread_repeat RC 0 REGEX "1 thread, 3 repeats.*verify: clean"
  ARGS run ${_bundled} --threads 1 --repeat 3)
nodemeta_cli_test(run_pass_subset RC 0 REGEX "cost.*propagate.*verify +137 +137"
  NOT_REGEX "fuse" ARGS run ${_bundled} --passes cost,propagate)
nodemeta_cli_test(run_json_quiet RC 0 STDOUT_EMPTY ARGS run ${_bundled} --json ${CMAKE_CURRENT_BINARY_DIR}/cli_run.json)
nodemeta_cli_test(run_json_stdout RC 0
  REGEX "^{\"graph\":.*\"name\":\"strip_debug\".*\"rejected_protected\":120.*\"verified\":true}"
  ARGS run ${_bundled} --json -)
# The parallelism the dependencies leave (issue 20): the bundled graph is one chain.
nodemeta_cli_test(run_parallelism RC 0
  REGEX "1 repeat\n  available parallelism 1\\.00 \\(work 289 / critical path 289\\), 1\\.00 \\(nodes 137 / depth 137\\)\n\npass"
  ARGS run ${_bundled} --passes cost)
nodemeta_cli_test(run_parallelism_json RC 0
  REGEX "\"parallelism\":{\"nodes\":137,\"depth\":137,\"work\":289,\"span\":289,\"by_work\":1,\"by_nodes\":1}"
  ARGS run ${_bundled} --passes cost --json -)
nodemeta_cli_test(inspect_graph RC 0 REGEX "137 nodes.*stem_proj +call_module +stem.proj" ARGS inspect ${_bundled})
nodemeta_cli_test(inspect_node RC 0
  REGEX "node 1 'stem_proj'.*debug_handle: 2\n.*'stem.proj': 'torch.nn.modules.conv.Conv2d'}\n +stack_trace:\n +File"
  ARGS inspect ${_bundled} --node stem_proj)
# Bad arguments: exit 2 with one clear line and a pointer to --help.
nodemeta_cli_test(no_command RC 2 REGEX "error: missing command" ARGS)
nodemeta_cli_test(unknown_command RC 2 REGEX "unknown command 'frobnicate'" ARGS frobnicate)
nodemeta_cli_test(unknown_option RC 2 REGEX "nodemeta run: error: unknown option '--bogus'\nTry 'nodemeta run --help'" ARGS run --bogus)
nodemeta_cli_test(bad_threads RC 2 REGEX "nodemeta run: error: --threads: expects a whole number from 1 to 1024, got '0'\nTry 'nodemeta run --help'"
  ARGS run --threads 0)
nodemeta_cli_test(bad_threads_equals RC 2 REGEX "--threads: expects a whole number from 1 to 1024, got 'two'"
  ARGS run --threads=two)
nodemeta_cli_test(bad_threads_short RC 2 REGEX "--threads: expects a whole number from 1 to 1024, got '2000'"
  ARGS run -t2000)
nodemeta_cli_test(missing_threads_value_short RC 2 REGEX "--threads needs a value" ARGS run -t)
nodemeta_cli_test(missing_threads_value RC 2 REGEX "--threads needs a value" ARGS run --threads)
nodemeta_cli_test(bad_repeat RC 2 REGEX "--repeat: expects a whole number from 1 to 1000000, got 'x'" ARGS run --repeat x)
nodemeta_cli_test(bad_pass RC 2 REGEX "unknown pass 'bogus' \\(valid: cost, fuse" ARGS run --passes cost,bogus)
nodemeta_cli_test(two_graphs RC 2 REGEX "more than one GRAPH" ARGS run a.json b.json)
nodemeta_cli_test(inspect_without_graph RC 2 REGEX "nodemeta inspect: error: GRAPH is required" ARGS inspect)
nodemeta_cli_test(top_unknown_option RC 2 REGEX "nodemeta: error: unknown option '--bogus'\nTry 'nodemeta --help'" ARGS --bogus)
nodemeta_cli_test(unknown_option_equals RC 2 REGEX "nodemeta run: error: unknown option '--thread'" ARGS run --thread=2)
nodemeta_cli_test(unknown_short_option RC 2 REGEX "nodemeta run: error: unknown option '-x'" ARGS run -x)
nodemeta_cli_test(inspect_unknown_option RC 2 REGEX "nodemeta inspect: error: unknown option '--bogus'\nTry 'nodemeta inspect --help'"
  ARGS inspect ${_bundled} --bogus)
nodemeta_cli_test(inspect_missing_node_value RC 2 REGEX "nodemeta inspect: error: --node needs a value" ARGS inspect ${_bundled} --node)
nodemeta_cli_test(inspect_two_graphs RC 2 REGEX "more than one GRAPH given \\('a.json' and 'b.json'\\)" ARGS inspect a.json b.json)
# Bad input: exit 1 with the loader's one-line error.
nodemeta_cli_test(missing_file RC 1 REGEX "no_such.json: cannot open: No such file or directory" ARGS run no_such.json)
nodemeta_cli_test(truncated_gzip RC 1 REGEX "truncated.json.gz: truncated gzip data" ARGS run ${_broken}/truncated.json.gz)
nodemeta_cli_test(duplicate_protected_key RC 1
  REGEX "nodes\\[1\\].meta.val \\(node 'relu'\\): protected key 'val' given twice with different values"
  ARGS run ${_broken}/duplicate_protected_key.json)
nodemeta_cli_test(inspect_unknown_node RC 1 REGEX "no node named 'nope'" ARGS inspect ${_bundled} --node nope)

# Graph-file limits (issue 8): refused with the file, the limit and how to raise it; bad values
# are usage errors.
nodemeta_cli_test(run_input_limit RC 1
  REGEX "mlp_mixer_s16.json.gz: inflates to more than 1024 bytes, the input limit \\(raise it with --max-input-bytes"
  ARGS run ${_bundled} --max-input-bytes 1K)
nodemeta_cli_test(run_input_limit_raised RC 0 REGEX "verify: clean" ARGS run ${_bundled} --max-input-bytes 64MiB)
nodemeta_cli_test(run_input_limit_bad RC 2 REGEX "--max-input-bytes: expects a size .*, got '5X'" ARGS run ${_bundled} --max-input-bytes 5X)
nodemeta_cli_test(run_depth_too_small RC 2 REGEX "--max-depth: must be at least 5 .*, got '4'" ARGS run ${_bundled} --max-depth 4)
nodemeta_cli_test(run_depth_limit RC 1 REGEX "nested deeper than 5 arrays/objects, the depth limit \\(raise it with --max-depth"
  ARGS run ${_bundled} --max-depth 5)
nodemeta_cli_test(inspect_limits RC 0 REGEX "137 nodes" ARGS inspect ${_bundled} --max-depth 300 --max-input-bytes 1G)
nodemeta_cli_test(inspect_limits_equals RC 0 REGEX "137 nodes" ARGS inspect ${_bundled} --max-depth=300 --max-input-bytes=64MiB)

# The annotated graph goes out (issue 14): what --output saves loads again and verifies clean.
nodemeta_cli_test(run_output RC 0 REGEX "verify: clean"
  ARGS run ${_bundled} --output ${CMAKE_CURRENT_BINARY_DIR}/cli_output.json.gz)
nodemeta_cli_test(run_output_verify RC 0 REGEX "mlp_mixer_s16, 121 nodes.*verify +121 +121 .*verify: clean"
  ARGS run ${CMAKE_CURRENT_BINARY_DIR}/cli_output.json.gz --passes verify)
nodemeta_cli_test(run_output_annotated RC 0
  REGEX "\n  flops: [0-9]+\n.*fused_pattern: 'linear_gelu'"
  ARGS inspect ${CMAKE_CURRENT_BINARY_DIR}/cli_output.json.gz --node blocks_0_mlp_tokens_fc1__blocks_0_mlp_tokens_act)
set_tests_properties(cli.run_output PROPERTIES FIXTURES_SETUP cli_output)
set_tests_properties(cli.run_output_verify cli.run_output_annotated PROPERTIES FIXTURES_REQUIRED cli_output)

# --mode: the training mode where the file does not record it (issue 14); it reaches the
# passes and the saved file, and contradicting the file is an error.
nodemeta_cli_test(run_mode_unknown RC 0 REGEX "traced in unknown mode" ARGS run ${_bundled} --passes cost)
nodemeta_cli_test(run_mode_eval RC 0 REGEX "traced in eval mode.*cost unknown for 1 of 137"
  ARGS run ${_bundled} --passes cost --mode eval --output ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json)
nodemeta_cli_test(run_mode_saved RC 0 REGEX "traced in eval mode" ARGS run ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json --passes verify)
nodemeta_cli_test(run_mode_contradicts RC 1 REGEX "cli_eval.json: the file says the graph was traced in eval mode; --mode training contradicts it"
  ARGS run ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json --mode training)
nodemeta_cli_test(run_mode_bad RC 2 REGEX "--mode: expects eval or training, got 'train'" ARGS run --mode train)
nodemeta_cli_test(run_mode_bad_short RC 2 REGEX "--mode: expects eval or training, got 'Eval'" ARGS run -m Eval)
set_tests_properties(cli.run_mode_eval PROPERTIES FIXTURES_SETUP cli_eval)
set_tests_properties(cli.run_mode_saved cli.run_mode_contradicts PROPERTIES FIXTURES_REQUIRED cli_eval)

# GNU forms and short options (issue 12): --opt=value, -o value, -ovalue.
nodemeta_cli_test(run_equals_forms RC 0 REGEX "traced in eval mode; 1 thread, 2 repeats.*\ncost .*\nverify .*verify: clean"
  NOT_REGEX "fuse" ARGS run ${_bundled} --threads=1 --repeat=2 --passes=cost,verify --mode=eval)
nodemeta_cli_test(run_short_forms RC 0 REGEX "traced in eval mode; 1 thread, 2 repeats.*\ncost .*\nverify .*verify: clean"
  NOT_REGEX "fuse" ARGS run ${_bundled} -t1 -r 2 -p cost -m eval -o ${CMAKE_CURRENT_BINARY_DIR}/cli_short.json)
nodemeta_cli_test(run_json_equals RC 0 REGEX "^{\"graph\":.*\"threads\":2,.*\"verified\":true}" ARGS run --json=- -t 2)
nodemeta_cli_test(inspect_node_short RC 0 REGEX "node 1 'stem_proj'" ARGS inspect ${_bundled} -n stem_proj)
nodemeta_cli_test(inspect_node_equals RC 0 REGEX "node 1 'stem_proj'" ARGS inspect ${_bundled} --node=stem_proj)

# inspect's columns stay apart for any length (issue 12): a 34-character name, a 200-character
# name and a 120-character target each keep two spaces before the next column.
set(_long_graph ${CMAKE_CURRENT_SOURCE_DIR}/data/ok/long_names.json)
string(REPEAT "n" 200 _n200)
string(REPEAT "t" 110 _t110)
nodemeta_cli_test(inspect_long_names RC 0
  REGEX "\n +0  down1_maxpool_conv_1_double_conv_0  +placeholder  +down1_maxpool_conv_1_double_conv_0  +\\(\\)  6 keys\n +1  ${_n200}  +call_function  +torch\\.ops\\.${_t110}  +\\(down1_maxpool_conv_1_double_conv_0\\)  6 keys\n +2  output  +output  +output  +\\(${_n200}\\)  6 keys\n"
  NOT_REGEX "[a-z0-9_](placeholder|call_function|output|torch)"
  ARGS inspect ${_long_graph})

# Printing what an argument or a graph file says (review of the command): C0/C1 controls, DEL, U+2028/2029
# and bidirectional controls come out as \uXXXX, invalid UTF-8 as \xNN, a value past 200
# bytes shortened; nothing reaches the terminal raw (ESC, tab, newline, U+202E RTL override).
string(ASCII 27 _esc)
string(ASCII 9 _tab)
string(ASCII 226 128 174 _rlo)
string(ASCII 255 _xff)
set(_raw_re "${_esc}|${_tab}|${_rlo}")
set(_control ${CMAKE_CURRENT_SOURCE_DIR}/data/ok/control_names.json)
nodemeta_cli_test(printable_inspect_table RC 0
  REGEX "model: 'evil\\\\x1b.2J\\\\u202e'\n.*\n +0  x\\\\u0009y\\\\u202ez  placeholder    x  +\\(\\)  6 keys\n +1  line\\\\u000abreak  call_function  torch\\.relu\\\\u001b.0;title\\\\u0007  \\(x\\\\u0009y\\\\u202ez\\)  7 keys\n"
  NOT_REGEX "${_raw_re}|line\nbreak" ARGS inspect ${_control})
nodemeta_cli_test(printable_run_model RC 0 REGEX "\n  graph evil\\\\u001b.2J\\\\u202e, 3 nodes"
  NOT_REGEX "${_raw_re}" ARGS run ${_control} --passes verify)
nodemeta_cli_test(printable_inspect_node RC 0
  REGEX "node 1 'line\\\\u000abreak'\n  op: call_function\n  target: torch\\.relu\\\\u001b.0;title\\\\u0007\n  inputs: .x\\\\u0009y\\\\u202ez.*note: 'a\\\\u009bb\\\\u2028c'"
  NOT_REGEX "${_raw_re}" ARGS inspect ${_control} --node "line\nbreak")
nodemeta_cli_test(printable_node_argument RC 1
  REGEX "no node named '\\\\u001bc\\\\u0009\\\\u202e\\\\u000ax\\\\xff'\n$"
  NOT_REGEX "${_raw_re}" ARGS inspect ${_bundled} --node "${_esc}c${_tab}${_rlo}\nx${_xff}")
nodemeta_cli_test(printable_option_value RC 2
  REGEX "--threads: expects a whole number from 1 to 1024, got '\\\\u001bc\\\\u202e'\n"
  NOT_REGEX "${_raw_re}" ARGS run -t "${_esc}c${_rlo}")
nodemeta_cli_test(printable_unknown_option RC 2 REGEX "unknown option '--x\\\\u001bc'\n"
  NOT_REGEX "${_raw_re}" ARGS run "--x${_esc}c")
nodemeta_cli_test(printable_graph_path RC 1 REGEX "error: x\\\\u001bc\\\\u202e.json: cannot open"
  NOT_REGEX "${_raw_re}" ARGS run "x${_esc}c${_rlo}.json")
string(REPEAT "9" 300 _long_value)
string(REPEAT "9" 200 _first_200)
nodemeta_cli_test(long_value_shortened RC 2 REGEX "got '${_first_200}\\.\\.\\. \\(300 bytes\\)'\n"
  ARGS run --repeat ${_long_value})

# inspect pads by terminal columns, not bytes (review of the command): 输入层 takes 6 columns in 9 bytes,
# café_relu 9 in 10, résumé (with combining accents) 6 in 10; every row's op and target start
# at the same column.
nodemeta_cli_test(inspect_display_width RC 0
  REGEX "\n    0  输入层     placeholder    résumé      \\(\\)  6 keys\n    1  café_relu  call_function  torch\\.relu  \\(输入层\\)  6 keys\n    2  output     output         output      \\(café_relu\\)  6 keys\n"
  ARGS inspect ${CMAKE_CURRENT_SOURCE_DIR}/data/ok/wide_names.json)

# The command line (review of the command): "--" ends the options, so a GRAPH may start with '-'; options go
# after the command; --help wins wherever it is; a repeated option takes its last value.
nodemeta_cli_test(dashes_run RC 0 REGEX "\ncost .*verify: clean" ARGS run -p cost -- ${_bundled})
nodemeta_cli_test(dashes_inspect RC 0 REGEX "137 nodes" ARGS inspect -- ${_bundled})
nodemeta_cli_test(dashes_dash_graph RC 1 REGEX "nodemeta run: error: -no-such.json: cannot open" ARGS run -- -no-such.json)
nodemeta_cli_test(dashes_inspect_dash_graph RC 1 REGEX "nodemeta inspect: error: --x.json: cannot open"
  ARGS inspect -n x -- --x.json)
nodemeta_cli_test(dashes_two_graphs RC 2 REGEX "more than one GRAPH given \\('[^']*mlp_mixer_s16.json.gz' and '-x'\\)"
  ARGS run ${_bundled} -- -x)
nodemeta_cli_test(dashes_inspect_no_graph RC 2 REGEX "nodemeta inspect: error: GRAPH is required" ARGS inspect --)
nodemeta_cli_test(dashes_before_command RC 2 REGEX "nodemeta: error: '--' must come after the command" ARGS -- run)
nodemeta_cli_test(option_before_command RC 2
  REGEX "^nodemeta: error: '-t' must come after the command: nodemeta run -t 2 \\.\\.\\.\nTry 'nodemeta --help'"
  ARGS -t 2 run ${_bundled})
nodemeta_cli_test(option_before_command_inspect RC 2
  REGEX "^nodemeta: error: '--node' must come after the command: nodemeta inspect --node=x \\.\\.\\.\n"
  ARGS --node=x inspect ${_bundled})
nodemeta_cli_test(unknown_option_before_command RC 2 REGEX "^nodemeta: error: unknown option '--bogus'\nTry 'nodemeta --help'"
  ARGS --bogus run)
nodemeta_cli_test(help_after_bad_option RC 0 REGEX "^load GRAPH.*usage: nodemeta run " ARGS run --bogus -h)
nodemeta_cli_test(help_after_bad_value RC 0 REGEX "^load GRAPH.*usage: nodemeta run " ARGS run -t abc --help)
nodemeta_cli_test(help_before_bad_value RC 0 REGEX "^load GRAPH.*usage: nodemeta run " ARGS run --help -t abc)
nodemeta_cli_test(help_before_command RC 0 REGEX "^print a graph's.*usage: nodemeta inspect " ARGS -h inspect --bogus)
nodemeta_cli_test(help_with_value RC 2 REGEX "^nodemeta: error: --help takes no value, got '1'\n" ARGS --help=1)
nodemeta_cli_test(run_help_with_value RC 2 REGEX "^nodemeta run: error: --help takes no value, got 'x'\n" ARGS run --help=x)
nodemeta_cli_test(version_with_value RC 2 REGEX "^nodemeta: error: --version takes no value, got '1'\n" ARGS --version=1)
nodemeta_cli_test(help_topic RC 0 REGEX "^print a graph's.*usage: nodemeta inspect " ARGS help inspect)
nodemeta_cli_test(help_bad_topic RC 2 REGEX "^nodemeta: error: help: expects run or inspect, got 'bogus'\n" ARGS help bogus)
nodemeta_cli_test(repeated_option RC 0 REGEX "\"threads\":2,.*\"passes\":.{\"name\":\"verify\""
  NOT_REGEX "\"name\":\"cost\"" ARGS run ${_bundled} -t 1 -p cost --threads=2 -p verify --json -)

# Output files (review of the command): an empty name, a directory, '-' for the graph, the
# GRAPH itself or the other output are bad arguments (exit 2); an output that cannot be
# written fails before the run (exit 1, with the reason).
set(_tiny ${CMAKE_CURRENT_SOURCE_DIR}/data/ok/tiny.json)
nodemeta_cli_test(run_json_empty RC 2 REGEX "nodemeta run: error: --json: expects a file name, got ''\n" ARGS run --json <empty>)
nodemeta_cli_test(run_output_empty RC 2 REGEX "nodemeta run: error: --output: expects a file name, got ''\n" ARGS run -o <empty>)
nodemeta_cli_test(run_json_directory RC 2 REGEX "--json: expects a file name, got '[^']+', a directory\n"
  ARGS run --json ${CMAKE_CURRENT_BINARY_DIR})
nodemeta_cli_test(run_output_directory RC 2 REGEX "--output: expects a file name, got '[^']+', a directory\n"
  ARGS run ${_tiny} -o ${CMAKE_CURRENT_BINARY_DIR})
nodemeta_cli_test(run_output_stdout RC 2 REGEX "--output: writing a graph to stdout is not supported, got '-'\n" ARGS run -o -)
nodemeta_cli_test(run_output_is_graph RC 2 REGEX "--output: '[^']*cli_eval.json' is the GRAPH being read; save to another file\n"
  ARGS run ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json -o ${CMAKE_CURRENT_BINARY_DIR}/./cli_eval.json)
nodemeta_cli_test(run_json_is_graph RC 2 REGEX "--json: '[^']*cli_eval.json' is the GRAPH being read"
  ARGS run ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json --json ${CMAKE_CURRENT_BINARY_DIR}/cli_eval.json)
set_tests_properties(cli.run_output_is_graph cli.run_json_is_graph PROPERTIES FIXTURES_REQUIRED cli_eval)
nodemeta_cli_test(run_json_same_as_output RC 2 REGEX "--json and --output both name '[^']*cli_both.json'\n"
  ARGS run ${_tiny} -o ${CMAKE_CURRENT_BINARY_DIR}/cli_both.json --json ${CMAKE_CURRENT_BINARY_DIR}/sub/../cli_both.json)
# Checked before a million repeats: this would otherwise outlast the test's timeout.
nodemeta_cli_test(run_json_unwritable RC 1 STDOUT_EMPTY
  REGEX "^nodemeta run: error: [^:]*/no_such_dir/r.json: cannot write: No such file or directory\n$"
  ARGS run ${_tiny} -p verify -r 1000000 --json ${CMAKE_CURRENT_BINARY_DIR}/no_such_dir/r.json)
nodemeta_cli_test(run_output_unwritable RC 1 REGEX "^nodemeta run: error: [^:]*/no_such_dir/g.json: cannot write: No such file or directory\n$"
  ARGS run ${_tiny} -p verify -r 1000000 -o ${CMAKE_CURRENT_BINARY_DIR}/no_such_dir/g.json)
# Outputs compared through symlinks, a dangling symlink, a folder that is a file, and a
# GRAPH that does not exist (its load says so, exit 1, not a same-file refusal).
set(_links ${CMAKE_CURRENT_BINARY_DIR}/cli_links)
file(MAKE_DIRECTORY ${_links}/real)
file(CREATE_LINK real ${_links}/link SYMBOLIC)
file(CREATE_LINK /nonexistent_nodemeta_dir/zz.json ${_links}/dangling.json SYMBOLIC)
nodemeta_cli_test(run_json_same_as_output_via_symlink RC 2 REGEX "--json and --output both name '[^']*link/out.json'\n"
  ARGS run ${_tiny} -o ${_links}/real/out.json --json ${_links}/link/out.json)
nodemeta_cli_test(run_output_dangling_symlink RC 1 STDOUT_EMPTY
  REGEX "^nodemeta run: error: [^:]*/dangling.json: cannot write: No such file or directory\n$"
  ARGS run ${_tiny} -p verify -r 1000000 -o ${_links}/dangling.json)
nodemeta_cli_test(run_output_under_a_file RC 1 STDOUT_EMPTY
  REGEX "^nodemeta run: error: [^:]*tiny.json/g.json: cannot write: Not a directory\n$"
  ARGS run ${_tiny} -p verify -r 1000000 -o ${_tiny}/g.json)
nodemeta_cli_test(run_missing_graph_as_output RC 1 REGEX "no_such_graph.json"
  ARGS run ${CMAKE_CURRENT_BINARY_DIR}/no_such_graph.json -o ${CMAKE_CURRENT_BINARY_DIR}/no_such_graph.json)
# A .gz suffix in any case means gzip.
nodemeta_cli_test(run_output_gz_uppercase RC 0 REGEX "verify: clean" ARGS run ${_tiny} -p cost -o ${CMAKE_CURRENT_BINARY_DIR}/cli_upper.JSON.GZ)
add_test(NAME cli.run_output_gz_uppercase_is_gzip
  COMMAND ${CMAKE_COMMAND} -DFILE=${CMAKE_CURRENT_BINARY_DIR}/cli_upper.JSON.GZ -DGZIP=1 -P ${CMAKE_CURRENT_SOURCE_DIR}/check_gzip.cmake)
set_tests_properties(cli.run_output_gz_uppercase PROPERTIES FIXTURES_SETUP cli_upper)
set_tests_properties(cli.run_output_gz_uppercase_is_gzip PROPERTIES LABELS graph FIXTURES_REQUIRED cli_upper)

# Numbers are digits only; a limit of 1 byte says "byte".
nodemeta_cli_test(bad_threads_space RC 2 REGEX "--threads: expects a whole number from 1 to 1024, got ' 2'" ARGS run -t " 2")
nodemeta_cli_test(bad_threads_plus RC 2 REGEX "--threads: expects a whole number from 1 to 1024, got '\\+2'" ARGS run -t +2)
nodemeta_cli_test(run_input_limit_one_byte RC 1 REGEX "tiny.json: is larger than 1 byte, the input limit"
  ARGS run ${_tiny} --max-input-bytes 1)

# Memory stays bounded (review of the command): at most 64 --passes entries, and per repeat
# only the times of a bounded sample are kept (every repeat's statistics were kept: ~40 MiB
# for 63 passes x 3000 repeats of a 3-node graph).
string(REPEAT "cost," 64 _65_passes)
nodemeta_cli_test(run_too_many_passes RC 2 REGEX "nodemeta run: error: --passes: expects at most 64 passes, got 65\n"
  ARGS run --passes ${_65_passes}verify)
string(REPEAT "cost," 62 _63_passes)
nodemeta_cli_test(run_many_passes RC 0 REGEX "\"repeat\":2,.*\"verified\":true" ARGS run ${_tiny} -r 2 -p ${_63_passes}cost --json -)
if(NODEMETA_SANITIZER STREQUAL "")
  nodemeta_cli_test(run_repeat_memory RC 0 REGEX "\"peak_rss_mib\":(1?[0-9])\\.[0-9]*,\"verified\":true"
    ARGS run ${_tiny} -r 3000 -p ${_63_passes}cost --json -)
endif()
nodemeta_cli_test(run_graph_empty RC 2 REGEX "nodemeta run: error: GRAPH: expects a file name, got ''\n" ARGS run <empty>)
nodemeta_cli_test(dashes_graph_empty RC 2 REGEX "nodemeta run: error: GRAPH: expects a file name, got ''\n" ARGS run -- <empty>)

# The graph attributes "modules" and "calls" (issue 23): summarised in the header, each
# node's entry shown with --node, and the costs they give.
set(_tables ${CMAKE_CURRENT_SOURCE_DIR}/data/ok/module_tables.json)
nodemeta_cli_test(inspect_tables RC 0
  REGEX "  modules: 1 entry \\(each node's with --node NAME\\)\n  calls: 1 entry"
  NOT_REGEX "Conv2d" ARGS inspect ${_tables})
nodemeta_cli_test(inspect_node_module RC 0
  REGEX "inputs: \\[x\\]\n  module \\(graph attribute modules\\): {'type': 'torch.nn.modules.conv.Conv2d'.*'weight': {'shape': \\[2, 3, 3, 3\\]"
  ARGS inspect ${_tables} --node conv)
nodemeta_cli_test(inspect_node_call RC 0
  REGEX "  call \\(graph attribute calls\\): {'args': \\[{'node': 'conv'}, 1\\], 'kwargs': {}}"
  ARGS inspect ${_tables} --node flatten)
nodemeta_cli_test(run_tables_cost RC 0 REGEX "cost unknown for 0 of 4 nodes" ARGS run ${_tables} --passes cost)
