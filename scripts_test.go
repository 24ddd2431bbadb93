package redlock

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every key a script touches is named in KEYS (DESIGN.md), so that a server
// that forbids undeclared keys (Dragonfly with its default flags) and a
// Redis Cluster node both run the scripts. The test reads every script
// rather than a list of them, so that the next one cannot break the rule
// silently.
func TestScriptsNameEveryKeyInKEYS(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("scripts", "*.lua"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scripts found: %v", err)
	}
	for _, path := range paths {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, problem := range undeclaredKeys(string(src)) {
			t.Errorf("%s:%s", path, problem)
		}
	}
}

// The check itself catches the ways a script can reach a key it did not
// declare.
func TestUndeclaredKeysAreFound(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		want      string // in the problem found; "" for none
	}{
		{"declared", "-- KEYS[1] k\nreturn redis.call('GET', KEYS[1])", ""},
		{"declared by index", "-- KEYS[1] k\nlocal i = 1\nreturn redis.call('GET', KEYS[i])", ""},
		{"loop over KEYS", "for i, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[i]) end", ""},
		{"keyless commands", "redis.call('TIME')\nredis.call('INFO', 'server')\nredis.pcall('PUBLISH', ARGV[1] .. 'x', 'y')", ""},
		{"every argument a key", "-- KEYS[1] a; KEYS[2] b\nredis.call('DEL', KEYS[1], KEYS[2])", ""},
		{"in a comment or string", "-- redis.call('GET', 'x')\nlocal s = \"redis.call('GET', 'x')\"\nreturn s", ""},
		{"concatenation", "-- KEYS[1] k\nredis.call('GET', KEYS[1] .. ':x')", "GET names a key that is not in KEYS: KEYS[1] .. ':x'"},
		{"computed in a variable", "-- KEYS[1] k\nlocal mark = KEYS[1] .. ':' .. ARGV[1]\nredis.call('GET', mark)", "GET names a key that is not in KEYS: mark"},
		{"literal", "redis.call('SET', 'fixed', 1)", "SET names a key that is not in KEYS: 'fixed'"},
		{"from ARGV", "redis.call('GET', ARGV[1])", "not in KEYS: ARGV[1]"},
		{"pcall", "redis.pcall('GET', ARGV[1])", "not in KEYS: ARGV[1]"},
		{"second key of many", "-- KEYS[1] k\nredis.call('DEL', KEYS[1], ARGV[1])", "DEL names a key that is not in KEYS: ARGV[1]"},
		{"loop variable rebound", "for _, key in ipairs(KEYS) do key = key .. ':x'; redis.call('GET', key) end", "not in KEYS: key"},
		{"loop variable shadowed", "for _, key in ipairs(KEYS) do end\nlocal key = 'x'\nredis.call('GET', key)", "not in KEYS: key"},
		{"loop over ARGV", "for _, key in ipairs(ARGV) do redis.call('GET', key) end", "not in KEYS: key"},
		{"KEYS written", "-- KEYS[1] k\nKEYS[1] = 'x'\nredis.call('GET', KEYS[1])", "KEYS is changed"},
		{"KEYS replaced", "KEYS = {'x'}", "KEYS is changed"},
		{"command by variable", "local cmd = 'GET'\nredis.call(cmd, ARGV[1])", "command is not a string literal"},
		{"unknown command", "redis.call('RENAME', 'a', 'b')", "RENAME: add its key positions"},
		{"call aliased", "local call = redis.call\ncall('GET', 'x')", "redis.call used other than as a call"},
		{"call by index", "redis['call']('GET', 'x')", "redis used other than as redis.call"},
		{"key not in the header", "redis.call('GET', KEYS[2])", "KEYS[2] is not described"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			problems := undeclaredKeys(tt.src)
			if tt.want == "" {
				if len(problems) > 0 {
					t.Errorf("undeclaredKeys(%q) = %q; want none", tt.src, problems)
				}
				return
			}
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tt.want) }) {
				t.Errorf("undeclaredKeys(%q) = %q; want one containing %q", tt.src, problems, tt.want)
			}
		})
	}
}

// keylessCommands are the commands the scripts may call without a key.
// PUBLISH's first argument is a channel, which is not a key.
var keylessCommands = map[string]bool{"INFO": true, "TIME": true, "PUBLISH": true}

// keyPositions says which arguments of a command are keys, counting the
// first after the command's name as 1; 0 means all of them. A command that
// is not listed is reported, so that a script that starts using one says
// where its keys are.
var keyPositions = map[string][]int{
	"GET": {1}, "SET": {1}, "DEL": {0}, "EXISTS": {0}, "PTTL": {1}, "PEXPIRE": {1},
	"LPOP": {1}, "LPUSH": {1}, "RPUSH": {1}, "LREM": {1}, "LPOS": {1}, "LRANGE": {1},
	"ZADD": {1}, "ZREM": {1}, "ZSCORE": {1}, "ZREMRANGEBYSCORE": {1},
}

// undeclaredKeys returns the problems of a script's source, each prefixed
// with its line: a redis.call or redis.pcall whose key is not KEYS[...] or
// a loop variable bound only by ipairs(KEYS), a change to KEYS, and a key of
// KEYS that the header comment does not describe.
func undeclaredKeys(src string) []string {
	toks, err := luaTokens(src)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	report := func(line int, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%d: ", line)+fmt.Sprintf(format, args...))
	}
	keyVars := keyLoopVariables(toks)
	for i, tok := range toks {
		switch {
		case tok.is("KEYS"):
			if end := keysUse(toks, i); end < 0 {
				report(tok.line, "KEYS is changed or passed on; read it only as KEYS[...], #KEYS or ipairs(KEYS)")
			}
		case tok.is("redis") && i+1 < len(toks) && toks[i+1].is("["):
			report(tok.line, "redis used other than as redis.call")
		case tok.is("redis") && i+2 < len(toks) && toks[i+1].is(".") && (toks[i+2].is("call") || toks[i+2].is("pcall")):
			if i+3 >= len(toks) || !toks[i+3].is("(") {
				report(tok.line, "redis.%s used other than as a call", toks[i+2].text)
				continue
			}
			args, ok := callArguments(toks, i+3)
			if !ok {
				report(tok.line, "unbalanced parentheses")
				return problems
			}
			for _, problem := range checkCall(args, keyVars) {
				report(tok.line, "%s", problem)
			}
		}
	}
	header := leadingComment(src)
	for i := range toks {
		if toks[i].is("KEYS") && i+3 < len(toks) && toks[i+1].is("[") && toks[i+2].kind == luaNumber && toks[i+3].is("]") {
			if name := "KEYS[" + toks[i+2].text + "]"; !strings.Contains(header, name) {
				report(toks[i].line, "%s is not described in the header comment", name)
			}
		}
	}
	return problems
}

// checkCall checks the arguments of one redis.call.
func checkCall(args [][]luaToken, keyVars map[string]bool) []string {
	if len(args) == 0 || len(args[0]) != 1 || args[0][0].kind != luaString {
		return []string{"command is not a string literal, so its keys cannot be checked"}
	}
	command := strings.ToUpper(args[0][0].text)
	if keylessCommands[command] {
		return nil
	}
	positions, ok := keyPositions[command]
	if !ok {
		return []string{command + ": add its key positions to keyPositions"}
	}
	var problems []string
	for i, arg := range args[1:] {
		if positions[0] != 0 && !slices.Contains(positions, i+1) {
			continue
		}
		if !isDeclaredKey(arg, keyVars) {
			problems = append(problems, fmt.Sprintf("%s names a key that is not in KEYS: %s", command, arg[0].source(arg[len(arg)-1])))
		}
	}
	if positions[0] != 0 && len(args)-1 < slices.Max(positions) {
		problems = append(problems, command+" has fewer arguments than its keys")
	}
	return problems
}

// isDeclaredKey reports whether an argument is KEYS[...] or a variable that
// only ipairs(KEYS) binds.
func isDeclaredKey(arg []luaToken, keyVars map[string]bool) bool {
	if len(arg) == 1 && arg[0].kind == luaName {
		return keyVars[arg[0].text]
	}
	return len(arg) >= 4 && arg[0].is("KEYS") && arg[1].is("[") && matching(arg, 1) == len(arg)-1
}

// keyLoopVariables returns the names bound by "for _, name in ipairs(KEYS)"
// and by nothing else: no other loop, local, parameter or assignment.
func keyLoopVariables(toks []luaToken) map[string]bool {
	fromKeys := map[string]int{}
	bound := map[string]int{}
	for i, tok := range toks {
		switch {
		case tok.is("for"):
			names, j := nameList(toks, i+1)
			for _, name := range names {
				bound[name]++
			}
			if len(names) == 2 && j+4 < len(toks) && toks[j].is("in") && toks[j+1].is("ipairs") &&
				toks[j+2].is("(") && toks[j+3].is("KEYS") && toks[j+4].is(")") {
				fromKeys[names[1]]++
			}
		case tok.is("local"):
			names, _ := nameList(toks, i+1)
			if i+1 < len(toks) && toks[i+1].is("function") {
				names, _ = nameList(toks, i+2)
			}
			for _, name := range names {
				bound[name]++
			}
		case tok.is("function"):
			j := i + 1
			for j < len(toks) && !toks[j].is("(") {
				j++
			}
			names, _ := nameList(toks, j+1)
			for _, name := range names {
				bound[name]++
			}
		case tok.is("="):
			// The targets of an assignment: name, name, ... = (not fields).
			for j := i - 1; j >= 0 && toks[j].kind == luaName; j -= 2 {
				if j > 0 && (toks[j-1].is(".") || toks[j-1].is(":")) {
					break
				}
				bound[toks[j].text]++
				if j == 0 || !toks[j-1].is(",") {
					break
				}
			}
		}
	}
	vars := map[string]bool{}
	for name, n := range fromKeys {
		vars[name] = bound[name] == n
	}
	return vars
}

// keysUse returns the index of the last token of a read of KEYS at toks[i]
// (KEYS[...] not assigned to, #KEYS or ipairs(KEYS)), or -1.
func keysUse(toks []luaToken, i int) int {
	if i+1 < len(toks) && toks[i+1].is("[") {
		end := matching(toks, i+1)
		if end < 0 || end+1 < len(toks) && toks[end+1].is("=") {
			return -1
		}
		return end
	}
	if i > 0 && toks[i-1].is("#") {
		return i
	}
	if i >= 2 && toks[i-1].is("(") && toks[i-2].is("ipairs") && i+1 < len(toks) && toks[i+1].is(")") {
		return i
	}
	return -1
}

// callArguments splits the arguments of the call whose "(" is toks[open].
func callArguments(toks []luaToken, open int) ([][]luaToken, bool) {
	end := matching(toks, open)
	if end < 0 {
		return nil, false
	}
	var args [][]luaToken
	start, depth := open+1, 0
	for j := open + 1; j < end; j++ {
		switch {
		case toks[j].is("(") || toks[j].is("[") || toks[j].is("{"):
			depth++
		case toks[j].is(")") || toks[j].is("]") || toks[j].is("}"):
			depth--
		case toks[j].is(",") && depth == 0:
			args = append(args, toks[start:j])
			start = j + 1
		}
	}
	if start < end {
		args = append(args, toks[start:end])
	}
	return args, true
}

// matching returns the index of the bracket that closes toks[open], or -1.
func matching(toks []luaToken, open int) int {
	depth := 0
	for j := open; j < len(toks); j++ {
		switch {
		case toks[j].is("(") || toks[j].is("[") || toks[j].is("{"):
			depth++
		case toks[j].is(")") || toks[j].is("]") || toks[j].is("}"):
			depth--
			if depth == 0 {
				return j
			}
		}
	}
	return -1
}

// nameList reads "name, name, ..." from toks[i] and returns the names and
// the index after them.
func nameList(toks []luaToken, i int) ([]string, int) {
	var names []string
	for i < len(toks) && toks[i].kind == luaName {
		names = append(names, toks[i].text)
		i++
		if i >= len(toks) || !toks[i].is(",") {
			break
		}
		i++
	}
	return names, i
}

// leadingComment returns the comment lines that open a script.
func leadingComment(src string) string {
	var b strings.Builder
	for line := range strings.Lines(src) {
		if !strings.HasPrefix(line, "--") {
			break
		}
		b.WriteString(line)
	}
	return b.String()
}

type luaTokenKind int

const (
	luaName luaTokenKind = iota
	luaNumber
	luaString
	luaPunct
)

type luaToken struct {
	kind     luaTokenKind
	text     string // a string's contents, without its quotes
	line     int
	src      string
	from, to int // where it is in src: src[from:to]
}

// source returns the source from t to last.
func (t luaToken) source(last luaToken) string { return t.src[t.from:last.to] }

// is reports whether the token is the name, keyword or punctuation s.
func (t luaToken) is(s string) bool { return t.kind != luaString && t.text == s }

// luaTokens splits Lua source into tokens, leaving out comments. It knows
// enough of Lua for the scripts' checks: names, numbers, quoted and long
// strings, comments, and punctuation, with "==", "~=", "<=", ">=" and ".."
// as single tokens so that "=" is always an assignment.
func luaTokens(src string) ([]luaToken, error) {
	var toks []luaToken
	line := 1
	add := func(kind luaTokenKind, text string, from, to int) {
		toks = append(toks, luaToken{kind: kind, text: text, line: line, src: src, from: from, to: to})
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case strings.HasPrefix(src[i:], "--"):
			i += 2
			if level, ok := longBracket(src[i:]); ok {
				end := strings.Index(src[i:], "]"+strings.Repeat("=", level)+"]")
				if end < 0 {
					return nil, fmt.Errorf("%d: unterminated comment", line)
				}
				line += strings.Count(src[i:i+end], "\n")
				i += end + level + 2
				continue
			}
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '[' && isLongString(src[i:]):
			level, _ := longBracket(src[i:])
			body := src[i+level+2:]
			end := strings.Index(body, "]"+strings.Repeat("=", level)+"]")
			if end < 0 {
				return nil, fmt.Errorf("%d: unterminated long string", line)
			}
			add(luaString, body[:end], i, i+level+2+end+level+2)
			line += strings.Count(body[:end], "\n")
			i += level + 2 + end + level + 2
		case c == '\'' || c == '"':
			j := i + 1
			var b strings.Builder
			for ; j < len(src) && src[j] != c; j++ {
				if src[j] == '\n' {
					return nil, fmt.Errorf("%d: unterminated string", line)
				}
				if src[j] == '\\' && j+1 < len(src) {
					j++
				}
				b.WriteByte(src[j])
			}
			if j >= len(src) {
				return nil, fmt.Errorf("%d: unterminated string", line)
			}
			add(luaString, b.String(), i, j+1)
			i = j + 1
		case isNameByte(c) && !(c >= '0' && c <= '9'):
			j := i
			for j < len(src) && isNameByte(src[j]) {
				j++
			}
			add(luaName, src[i:j], i, j)
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (isNameByte(src[j]) || src[j] == '.') {
				j++
			}
			add(luaNumber, src[i:j], i, j)
			i = j
		default:
			n := 1
			for _, op := range []string{"...", "==", "~=", "<=", ">=", ".."} {
				if strings.HasPrefix(src[i:], op) {
					n = len(op)
					break
				}
			}
			add(luaPunct, src[i:i+n], i, i+n)
			i += n
		}
	}
	return toks, nil
}

// longBracket reports whether s opens a long bracket, [[ or [=*[, and its
// level (the number of '=').
func longBracket(s string) (level int, ok bool) {
	if !strings.HasPrefix(s, "[") {
		return 0, false
	}
	level = len(s[1:]) - len(strings.TrimLeft(s[1:], "="))
	return level, len(s) > level+1 && s[level+1] == '['
}

func isLongString(s string) bool {
	_, ok := longBracket(s)
	return ok
}

func isNameByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
